"""carry_detail: fidelity passes the input's band above a low-resolution restorer's own band."""
import torch
import torch.nn.functional as F

from facerefine.core.lookup.input_detail import carry_detail


def test_detail_band_follows_fidelity():
    g = torch.Generator().manual_seed(0)
    lq = torch.rand(2, 3, 128, 128, generator=g)
    restored = torch.rand(2, 3, 32, 32, generator=g) * 0.5 + 0.25
    plain = F.interpolate(restored, size=(128, 128), mode="bicubic", align_corners=False, antialias=True)
    assert torch.allclose(carry_detail(restored, lq, 32, 0.0), plain)
    half, full = carry_detail(restored, lq, 32, 0.5), carry_detail(restored, lq, 32, 1.0)
    # more fidelity = more of the input's fine detail (high band) in the output
    def high(x):
        return x - F.interpolate(F.avg_pool2d(x, 4), size=x.shape[-2:], mode="bilinear", align_corners=False)
    corr = [F.cosine_similarity(high(o).flatten(1), high(lq).flatten(1)).mean().item() for o in (plain, half, full)]
    assert corr[0] < corr[1] < corr[2]
    # each face is processed alone (batching does not mix faces)
    assert torch.equal(carry_detail(restored[:1], lq[:1], 32, 0.5), half[:1])


def test_full_resolution_restorer_is_untouched():
    lq = torch.rand(1, 3, 64, 64)
    restored = torch.rand(1, 3, 64, 64)
    assert torch.equal(carry_detail(restored, lq, 64, 1.0), restored)
