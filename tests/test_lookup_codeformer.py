"""CodeFormer through spandrel_extra_arches: our lookup path vs spandrel's own forward, fidelity w,
quality conditioning (zero-init = bit-exact), registry loading and wrong files.

A 512^2 CodeFormer forward costs seconds on CPU (fixed VQGAN CNN), so one face is shared by the module."""
import os

import numpy as np
import pytest
import torch

from tiny_models import make_tiny_codeformer, make_tiny_gfpgan, make_tiny_quality_condition

from facerefine.core.lookup.lookup import decode, lookup
from facerefine.core.lookup.options import LookupOptions
from facerefine.core.types import FaceCrops, FaceInfo
from facerefine.errors import FaceRefineError, WrongArchitectureError
from facerefine.models.restorers import load_restorer

DIM, LAYERS = 32, 1


def one_face(size=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, 16, 16, generator=g)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    info = FaceInfo(np.eye(2, 3), np.eye(2, 3), np.zeros((5, 2)), (0.0, 0.0, 512.0, 512.0), 1.0, 0, (size, size))
    return FaceCrops(x, (info,), size)


@pytest.fixture(scope="module")
def cf_path(tmp_path_factory):
    return make_tiny_codeformer(tmp_path_factory.mktemp("cf") / "codeformer.pth", dim_embd=DIM, n_layers=LAYERS)


@pytest.fixture(scope="module")
def restorer(cf_path):
    return load_restorer(str(cf_path), "cpu")


@pytest.fixture(scope="module")
def runs(restorer):
    """Our lookup at w=0 (+ decode at w=1 from its latent) and spandrel's own forward at w=0 and w=1."""
    face = one_face()
    ours_w0, latent = lookup(face, restorer, LookupOptions(quality=1.0, fidelity=0.0, mode="off"))
    with torch.inference_mode():
        ours_w1 = decode(restorer, latent.quantized, latent.skip_features, 1.0)
        x = face.crops * 2 - 1
        net = restorer.module
        ref = {w: ((net(x, weight=w)[0] + 1) / 2).clamp(0, 1) for w in (0.0, 1.0)}
    return {"face": face, "w0": ours_w0.crops, "w1": ours_w1, "latent": latent, "ref": ref}


def test_detected_and_loaded_through_spandrel(restorer):
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer
    assert restorer.architecture == "CodeFormer"
    assert isinstance(restorer.module, CodeFormer)
    assert restorer.supports_quality and not restorer.has_trained_conditioning


def test_conditioning_off_matches_spandrel_forward(runs):
    assert (runs["w0"] - runs["ref"][0.0]).abs().max() <= 1e-5
    assert (runs["w1"] - runs["ref"][1.0]).abs().max() <= 1e-5


def test_fidelity_zero_and_one_differ(runs):
    assert (runs["w0"] - runs["w1"]).abs().max() > 1e-3


def test_latent_for_the_refine_step(runs):
    lat = runs["latent"]
    assert lat.architecture == "CodeFormer" and lat.extra["decodable"]
    assert lat.lq_features.shape == (1, 256, 16, 16) and lat.quantized.shape == (1, 256, 16, 16)
    assert lat.indices.shape == (1, 256) and lat.logits.shape == (1, 256, 64)
    assert set(lat.skip_features) == {"32", "64", "128", "256"}
    assert torch.equal(lat.indices, lat.logits.argmax(-1))


def test_zero_initialised_conditioning_is_bit_exact(restorer, runs, tmp_path):
    lq = runs["latent"].lq_features
    cb = restorer.codebook
    with torch.inference_mode():
        plain = cb.logits(lq)
        assert torch.equal(plain, runs["latent"].logits)
        restorer.attach_quality_condition(make_tiny_quality_condition(tmp_path / "zero.safetensors", dim_embd=DIM,
                                                                      n_layers=LAYERS, random_output=False))
        try:
            assert restorer.has_trained_conditioning
            for q in (0.0, 0.5, 1.0):
                assert torch.equal(cb.logits(lq, cb.film(torch.tensor([q]))), plain)
            restorer.attach_quality_condition(make_tiny_quality_condition(tmp_path / "rand.safetensors",
                                                                          dim_embd=DIM, n_layers=LAYERS))
            low, high = (cb.logits(lq, cb.film(torch.tensor([q]))) for q in (0.0, 1.0))
            assert not torch.equal(low, high) and not torch.equal(low, plain)
        finally:
            cb.quality_condition = None


def test_conditioning_file_is_small_and_checked(restorer, tmp_path):
    from facerefine.models.arch.quality_condition import QualityCondition
    path = QualityCondition(dim_embd=512, n_layers=9).save(tmp_path / "full.safetensors")
    assert path.stat().st_size < 8 * 1024 * 1024  # for a full-size CodeFormer Transformer (vs 377 MB)
    with pytest.raises(WrongArchitectureError, match="different Transformer"):
        restorer.attach_quality_condition(path)
    assert restorer.codebook.quality_condition is None


def test_gfpgan_state_dict_as_conditioning_is_a_clear_error(restorer, tmp_path):
    gfpgan = make_tiny_gfpgan(tmp_path / "GFPGANv1.4.pth")
    with pytest.raises(WrongArchitectureError) as err:
        restorer.attach_quality_condition(gfpgan)
    assert "not a FaceRefine quality-conditioning file" in str(err.value) and "GFPGAN" in str(err.value)


def test_trained_mode_without_conditioning_is_a_user_error(restorer, runs):
    with pytest.raises(FaceRefineError, match="conditioning"):
        lookup(runs["face"], restorer, LookupOptions(mode="trained"))


def test_loaded_by_registry_name_from_facerefine_home(cf_path, tmp_path, monkeypatch):
    folder = tmp_path / "home" / "facerestore_models"
    folder.mkdir(parents=True)
    os.symlink(cf_path, folder / "codeformer.pth")  # the registry's file name for "codeformer"
    monkeypatch.setenv("FACEREFINE_HOME", str(tmp_path / "home"))
    r = load_restorer("codeformer")
    assert r.name == "codeformer" and r.architecture == "CodeFormer"
