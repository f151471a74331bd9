"""face-niqe parameters: the shipped file is what lab/train/fit_face_niqe.py produces.

Quick path (always, with the London data): recompute the features of three training
images and check them against the per-image moments stored by the fit, and check that
the stored moments aggregate to the shipped mean and variances. The full refit (about a
minute of CPU) runs with FACEREFINE_SLOW_TESTS=1 and must match the file to 1e-6.
"""
import os

import pytest
import torch

from facerefine.lab.datasets import london_split
from facerefine.core.score.face_niqe import FaceNiqeConfig, load_face_niqe, nss_features
from facerefine.lab.train import fit_face_niqe as fit
from facerefine.models.loading import load_state_dict
from facerefine.models.locate import resolve


def _shipped():
    return load_state_dict(resolve("face-niqe", "facerefine", download=False), unwrap=False)


def _metadata():
    from safetensors import safe_open
    with safe_open(str(resolve("face-niqe", "facerefine", download=False)), "pt") as f:
        return f.metadata()


def test_shipped_file_is_small_and_self_describing():
    path = resolve("face-niqe", "facerefine", download=False)
    assert path.stat().st_size < 200_000
    sd = _shipped()
    cfg = FaceNiqeConfig.from_tensor_dict(sd)
    assert cfg == fit.DEFAULT_CONFIG
    assert sd["mu"].shape == (cfg.feature_dim,) and sd["cov"].shape == (cfg.feature_dim,) * 2
    assert torch.allclose(sd["cov"], sd["cov"].T)
    assert torch.linalg.eigvalsh(sd["cov"]).min() > 0
    assert tuple(sd["norm_range"].tolist()) == fit.NORM_RANGE
    model = load_face_niqe()
    assert model.norm_range == fit.NORM_RANGE


def test_fitted_only_on_training_identities(london_dir):
    split = london_split(london_dir)
    names = _metadata()["train_files"].split(",")
    assert names == [p.name for p in split["train_neutral"]]
    heldout = {p.name for p in split["heldout_neutral"] + split["heldout_smiling"]}
    assert not heldout & set(names)
    assert int(_shipped()["num_images"]) == len(names)


def test_stored_moments_reproduce_and_aggregate(london_dir):
    sd = _shipped()
    mu, var = fit.aggregate_moments(sd)
    assert torch.allclose(mu, sd["mu"], rtol=1e-9, atol=1e-9)
    assert torch.allclose(var, torch.diagonal(sd["cov"]), rtol=1e-6, atol=1e-9)
    paths = london_split(london_dir)["train_neutral"]
    picks = [0, len(paths) // 2, len(paths) - 1]
    x = torch.stack([fit.load_london_crop(paths[i]) for i in picks])
    with torch.inference_mode():
        feats, _ = nss_features(x, FaceNiqeConfig.from_tensor_dict(sd))
    for row, i in enumerate(picks):
        f = feats[row].double()
        assert torch.allclose(f.mean(0), sd["per_image_mean"][i], rtol=1e-4, atol=1e-5)
        assert torch.allclose(f.pow(2).mean(0), sd["per_image_sqmean"][i], rtol=1e-4, atol=1e-5)


def test_fit_is_deterministic_on_a_subset(london_dir):
    paths = london_split(london_dir)["train_neutral"][:2]
    a = fit.fit(paths)
    b = fit.fit(list(reversed(paths)))
    assert torch.allclose(a["mu"], b["mu"], rtol=1e-9) and torch.allclose(a["cov"], b["cov"], rtol=1e-9)
    assert torch.equal(a["per_image_mean"], b["per_image_mean"].flip(0))


@pytest.mark.skipif(os.environ.get("FACEREFINE_SLOW_TESTS") != "1", reason="full refit: set FACEREFINE_SLOW_TESTS=1")
def test_full_refit_matches_shipped(london_dir):
    paths = london_split(london_dir)["train_neutral"]
    diff = fit.compare(fit.fit(paths), _shipped())
    assert diff["mu"] < 1e-6 and diff["cov"] < 1e-6, diff
