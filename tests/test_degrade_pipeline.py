"""The synthetic degradation pipeline: seeded, reproducible, within its documented ranges, and each
single degradation grows with its severity."""
import numpy as np
import pytest
import torch

from facerefine.lab import degrade as D


def _images(n=4, size=64):
    g = torch.Generator().manual_seed(3)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.stack([xx, yy, (xx + yy) / 2])
    texture = (torch.rand(1, size, size, generator=g) - 0.5) * 0.4  # aperiodic detail
    return torch.stack([(base * torch.rand(3, 1, 1, generator=g) + texture + 0.3).clamp(0, 1) for _ in range(n)])


def test_same_seed_same_lq_and_different_seed_differs():
    x = _images()
    a, pa = D.degrade(x, seed=7)
    b, pb = D.degrade(x, seed=7)
    c, _ = D.degrade(x, seed=8)
    assert torch.equal(a, b)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert float(a.min()) >= 0 and float(a.max()) <= 1


def test_generator_stream_continues_deterministically():
    x = _images()
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    first = [D.degrade(x, generator=g1)[0] for _ in range(2)]
    second = [D.degrade(x, generator=g2)[0] for _ in range(2)]
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], first[1])


def test_parameters_stay_in_documented_ranges_scaled_by_size():
    cfg = D.DegradeConfig()
    p = D.sample_params(2000, 128, cfg, torch.Generator().manual_seed(0))
    scale = 128 / 512
    assert p["blur_sigma"].min() >= 0.1 * scale - 1e-6 and p["blur_sigma"].max() <= 10 * scale + 1e-6
    assert p["downscale"].min() >= 1.0 and p["downscale"].max() <= 8 * scale + 0.125
    assert p["noise_sigma"].max() <= 20 / 255 + 1e-6
    assert p["jpeg_quality"].min() >= 60 and p["jpeg_quality"].max() <= 100
    assert 0.05 < p["motion"].float().mean() < 0.15      # motion_prob 0.1
    assert 0.15 < p["poisson"].float().mean() < 0.25     # poisson_prob 0.2
    assert not p["gray"].any() and not p["jitter"].any()  # off by default


def test_config_round_trip_and_unknown_keys():
    cfg = D.DegradeConfig.from_dict({"jpeg_quality": [30, 50], "gray_prob": 0.5})
    assert cfg.jpeg_quality == (30, 50)
    assert D.DegradeConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        D.DegradeConfig.from_dict({"blur": 3})


def test_options_colour_jitter_and_grayscale():
    x = _images(8)
    lq, p = D.degrade(x, D.DegradeConfig(gray_prob=1.0, jpeg_quality=(100, 100), noise_sigma=(0, 0),
                                         poisson_prob=0.0), seed=0)
    assert torch.allclose(lq[:, 0], lq[:, 1], atol=1e-6) and torch.allclose(lq[:, 1], lq[:, 2], atol=1e-6)
    shift = torch.full((8, 3), 0.05)
    assert torch.allclose(D.color_jitter(x * 0.5, shift), x * 0.5 + 0.05, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(D.SEVERITY_KINDS) + ["combined"])
def test_severity_zero_is_identity_and_error_grows(kind):
    x = _images(2, 128)
    errors = [float((D.apply_severity(x, kind, lvl) - x).abs().mean()) for lvl in (0.0, 0.25, 0.5, 1.0)]
    assert errors[0] < 1e-6
    assert all(b > a for a, b in zip(errors, errors[1:])), errors
    with pytest.raises(ValueError):
        D.apply_severity(x, "nope", 0.5)


def test_single_functions_batched_equal_one_at_a_time():
    x = _images(3)
    sig = torch.tensor([0.5, 1.5, 3.0])
    batched = D.gaussian_blur(x, sig)
    singles = torch.cat([D.gaussian_blur(x[i:i + 1], float(sig[i])) for i in range(3)])
    assert float((batched - singles).abs().max()) < 2e-3
    q = torch.tensor([30.0, 70.0, 101.0])
    jb = D.jpeg(x, q)
    js = torch.cat([D.jpeg(x[i:i + 1], float(q[i])) for i in range(3)])
    assert torch.equal(jb, js) and torch.equal(jb[2], x[2])
    f = torch.tensor([1.0, 2.0, 4.0])
    db = D.downscale(x, f)
    assert torch.equal(db[0], x[0])
    assert torch.allclose(db[2:3], D.downscale(x[2:3], 4.0))
    ml = D.motion_blur(x, torch.tensor([0.0, 5.0, 9.0]), torch.tensor([0.0, 30.0, 90.0]))
    assert torch.equal(ml[0], x[0]) and not torch.equal(ml[1], x[1])


def test_noise_uses_generator():
    x = _images(2)
    a = D.gaussian_noise(x, 0.05, torch.Generator().manual_seed(0))
    b = D.gaussian_noise(x, 0.05, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    p = D.poisson_noise(x, 1.0, torch.Generator().manual_seed(0))
    assert 0.001 < float((p - x).abs().mean()) < 0.1


def test_real_faces_degrade_monotonically(london_dir):
    from facerefine.lab import datasets
    from facerefine.lab.train.data import align_face
    files = datasets.london_split(london_dir)["heldout_neutral"][:2]
    x = torch.from_numpy(np.stack([align_face(p, 128) for p in files])).permute(0, 3, 1, 2).float() / 255
    for kind in ("blur", "downscale", "noise", "jpeg"):
        errs = [float((D.apply_severity(x, kind, lvl) - x).abs().mean()) for lvl in (0.2, 0.6, 1.0)]
        assert errs[0] < errs[1] < errs[2], (kind, errs)
