"""GFPGAN / RestoreFormer++ through spandrel (no lookup Transformer: base output, slider inert) and wrong files."""
import numpy as np
import pytest
import torch

from tiny_models import make_tiny_gfpgan, make_tiny_quality_condition, make_tiny_restoreformer

from facerefine.core.lookup.lookup import lookup
from facerefine.core.lookup.options import LookupOptions
from facerefine.core.types import FaceCrops, FaceInfo
from facerefine.errors import FaceRefineError, WeightsFormatError, WeightsNotFoundError, WrongArchitectureError
from facerefine.models.restorers import load_restorer


def faces(n, size=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=(size, size), mode="bilinear")
    info = FaceInfo(np.eye(2, 3), np.eye(2, 3), np.zeros((5, 2)), (0.0, 0.0, size, size), 1.0, 0, (size, size))
    return FaceCrops(x, (info,) * n, size)


# one torch thread: small ops on a shared CPU are faster without OpenMP spin-waits
pytestmark = pytest.mark.usefixtures("one_thread")


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def never_called(x):
    raise AssertionError("the critic must not run for restorers without a lookup")


def test_gfpgan_gives_its_base_output_and_ignores_the_slider(tmp_path):
    r = load_restorer(str(make_tiny_gfpgan(tmp_path / "GFPGANv1.4.safetensors")))
    assert r.architecture == "GFPGAN" and not r.supports_quality
    crops = faces(2)
    out, lat = lookup(crops, r, LookupOptions(quality=1.0, fidelity=0.9, mode="training-free", critic=never_called))
    with torch.inference_mode():
        ref = ((r.module(crops.crops * 2 - 1, return_rgb=False, randomize_noise=False)[0] + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(out.crops, ref, atol=1e-5, rtol=0)
    assert "quality slider" in lat.extra["note"] and lat.extra["mode"] == "off" and not lat.extra["decodable"]
    single, _ = lookup(crops.select([1]), r, LookupOptions(quality=0.0, mode="auto"))
    torch.testing.assert_close(single.crops, out.crops[1:], atol=1e-5, rtol=0)  # batch = one at a time


def test_restoreformer_through_spandrel_call(tmp_path):
    r = load_restorer(str(make_tiny_restoreformer(tmp_path / "RestoreFormer++.safetensors")))
    assert r.architecture == "RestoreFormer"
    crops = faces(1, seed=1)
    out, lat = lookup(crops, r, LookupOptions(quality=0.3, mode="auto"))
    with torch.inference_mode():
        ref = r.descriptor(crops.crops).clamp(0, 1)
    torch.testing.assert_close(out.crops, ref, atol=1e-5, rtol=0)
    assert "no lookup Transformer" in lat.extra["note"]


def test_restoreformer_lightning_prefix_is_accepted(tmp_path):
    from facerefine.models.loading import load_state_dict
    from facerefine.models.restorers import detect_architecture
    from facerefine.models.spandrel_loader import canonical_state_dict
    sd = load_state_dict(make_tiny_restoreformer(tmp_path / "rf.safetensors"))
    wrapped = {f"vqvae.{k}": v for k, v in sd.items()}
    wrapped["loss.discriminator.main.0.weight"] = torch.zeros(1)
    assert detect_architecture(canonical_state_dict(wrapped)) == "RestoreFormer"


def test_other_spandrel_models_are_not_face_restorers(tmp_path):
    import spandrel.architectures.Compact as compact
    Compact = getattr(compact, "Compact", None) or compact.SRVGGNetCompact  # spandrel 0.4 / 0.3 (A1111's pin)
    path = tmp_path / "upscaler.safetensors"
    from facerefine.models.loading import save_safetensors
    save_safetensors(Compact(num_feat=8, num_conv=2).state_dict(), path)
    with pytest.raises(WrongArchitectureError, match="not a face restorer"):
        load_restorer(str(path))


def test_unknown_and_broken_files(tmp_path):
    from facerefine.models.loading import save_safetensors
    junk = save_safetensors({"foo.weight": torch.zeros(2)}, tmp_path / "junk.safetensors")
    with pytest.raises(WrongArchitectureError, match="CodeFormer, GFPGAN"):
        load_restorer(str(junk))
    cond = make_tiny_quality_condition(tmp_path / "cond.safetensors")
    with pytest.raises(WrongArchitectureError, match="conditioning"):
        load_restorer(str(cond))
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(WeightsFormatError):
        load_restorer(str(tmp_path / "empty.pth"))
    with pytest.raises(WeightsNotFoundError, match="codeformer.pth"):
        load_restorer("codeformer")
    assert issubclass(WrongArchitectureError, FaceRefineError)


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"params_ema": {"a": torch.zeros(1)}, "obj": Evil()}, path)
    with pytest.raises(WeightsFormatError, match="refused"):
        load_restorer(str(path))
