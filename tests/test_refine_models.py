"""Refine models: latent prior / identity files, training steps, the ComfyUI nodes and the pipeline step."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import refine_fixtures as fx  # noqa: E402

from facerefine.lab.refine_training import identity_recovery_step, score_matching_step  # noqa: E402
from facerefine.errors import WeightsNotFoundError, WrongArchitectureError  # noqa: E402
from facerefine.models.arch.identity import (IdentityRecoveryNetwork, LatentMask, RecoveryConfig,  # noqa: E402
                                             load_identity_recovery, save_identity_recovery)
from facerefine.models.arch.latent_prior import build_latent_prior, load_latent_prior, save_latent_prior  # noqa: E402


# one torch thread: small ops on a shared CPU are faster without OpenMP spin-waits
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    restorer = fx.load_tiny_restorer(tmp_path_factory.mktemp("tiny"))
    lq = fx.make_faces(2, 256, seed=0)
    restored, latent = fx.lookup_latent(lq, restorer)
    return dict(restorer=restorer, lq=lq, restored=restored, latent=latent)


def test_prior_file_roundtrip_and_wrong_file(tmp_path, setup):
    prior = fx.tiny_prior(setup["latent"])
    path = save_latent_prior(prior, tmp_path / "prior.safetensors")
    back = load_latent_prior(path)
    assert back.config == prior.config
    x = torch.randn(2, *setup["latent"].quantized.shape[1:])
    cond = torch.randn(2, *setup["latent"].lq_features.shape[1:])
    with torch.no_grad():
        assert torch.equal(back(x, torch.tensor([0.5, 2.0]), cond), prior(x, torch.tensor([0.5, 2.0]), cond))
    from facerefine.models.loading import save_safetensors
    other = save_safetensors({"w": torch.zeros(3)}, tmp_path / "other.safetensors")
    with pytest.raises(WrongArchitectureError, match="not a FaceRefine latent prior"):
        load_latent_prior(other)
    with pytest.raises(ValueError, match="latent prior expects"):
        build_latent_prior(latent_channels=8).check_latent(setup["latent"].quantized, setup["latent"].lq_features)


def test_score_matching_step_learns(setup):
    """A few EDM steps on a tiny set of latents lower the (fixed-noise) evaluation loss."""
    torch.manual_seed(0)
    lat = setup["latent"]
    clean = lat.quantized.repeat(4, 1, 1, 1) + 0.1 * torch.randn(8, *lat.quantized.shape[1:])
    cond = lat.lq_features.repeat(4, 1, 1, 1)
    prior = build_latent_prior(latent_channels=clean.shape[1], cond_channels=cond.shape[1],
                               latent_size=clean.shape[-1], hidden=32, depth=1, heads=2)
    prior.fit_statistics(clean, cond)

    def evaluate():
        return score_matching_step(prior, None, clean, cond, generator=torch.Generator().manual_seed(5))
    before = evaluate()
    opt = torch.optim.Adam(prior.parameters(), lr=1e-2)
    for i in range(60):
        loss = score_matching_step(prior, opt, clean, cond, generator=torch.Generator().manual_seed(i))
        assert torch.isfinite(torch.tensor(loss))
    assert evaluate() < before * 0.9
    assert not prior.training


def test_identity_recovery_step_trains_irn_and_mask(tmp_path, setup):
    from facerefine.core.refine.refine import restorer_decoder
    lat = setup["latent"]
    id_model = fx.small_arcface()
    id_model.recovery = IdentityRecoveryNetwork(RecoveryConfig(cond_channels=lat.lq_features.shape[1],
                                                               latent_size=lat.quantized.shape[-1], hidden=64))
    id_model.mask = LatentMask(lat.quantized.shape[-1])
    hq = fx.make_faces(2, 256, seed=3).crops
    decode = restorer_decoder(setup["restorer"], lat, torch.arange(2))
    params = list(id_model.recovery.parameters()) + list(id_model.mask.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    mask_before = id_model.mask.logits.detach().clone()
    first = identity_recovery_step(id_model, opt, setup["lq"].crops, hq, lat.lq_features,
                                   restored_latent=lat.quantized, decode=decode)
    for _ in range(4):
        last = identity_recovery_step(id_model, opt, setup["lq"].crops, hq, lat.lq_features)
    assert {"identity_recovery", "mask_identity", "mask_pixel", "mask_fraction", "loss"} <= set(first)
    assert last["identity_recovery"] < first["identity_recovery"]
    assert not torch.equal(mask_before, id_model.mask.logits)
    path = save_identity_recovery(id_model, tmp_path / "irn.safetensors")
    irn, mask = load_identity_recovery(path)
    assert torch.equal(mask.logits, id_model.mask.logits)
    with torch.no_grad():
        emb = id_model.embed(setup["lq"].crops)
        assert torch.allclose(irn(emb, lat.lq_features), id_model.recovery(emb, lat.lq_features))
    # the trained IRN becomes the identity target
    from facerefine.core.refine.options import RefineOptions
    from facerefine.core.refine.refine import RefineRun, refine_latent
    res = refine_latent(setup["restored"], lat, RefineRun(setup["restorer"], None, id_model),
                        RefineOptions(steps=2, strength=0.3, identity_strength=0.5), setup["lq"].crops)
    assert res.target_source == "recovery" and res.mask_source == "learned"


def test_arcface_registry_loading(tmp_path, monkeypatch):
    """ArcFace IR-SE50 loads through the registry name 'arcface' (file in FACEREFINE_HOME/facedetection)."""
    from facexlib.recognition.arcface_arch import Backbone

    from facerefine.models.arch.identity import load_arcface, load_id_model
    with pytest.raises(WeightsNotFoundError, match="recognition_arcface_ir_se50.pth"):
        load_arcface("arcface")
    home = Path(__import__("os").environ["FACEREFINE_HOME"]) / "facedetection"
    home.mkdir(parents=True)
    torch.manual_seed(0)
    net = Backbone(50, 0.6, "ir_se")
    torch.save(net.state_dict(), home / "recognition_arcface_ir_se50.pth")
    model = load_id_model("arcface")
    assert model.recovery is None and model.mask is None
    with torch.no_grad():
        emb = model.embed(torch.rand(1, 3, 128, 128))
    assert emb.shape == (1, 512) and abs(float(emb.norm()) - 1) < 1e-4
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(WrongArchitectureError, match="ArcFace-IR-SE50"):
        load_arcface(str(bad))


def test_nodes(tmp_path, setup, monkeypatch):
    from facerefine.nodes import NODE_CLASS_MAPPINGS
    from facerefine.nodes.refine_nodes import (FaceRefineIdentityLatentRefine, FaceRefineIdModelLoader,
                                               FaceRefineLatentPriorLoader)
    for name in ("FaceRefineIdentityLatentRefine", "FaceRefineLatentPriorLoader", "FaceRefineIdModelLoader"):
        assert name in NODE_CLASS_MAPPINGS
    spec = FaceRefineIdentityLatentRefine.INPUT_TYPES()
    assert spec["optional"]["reference"][0] == "IMAGE"
    assert FaceRefineLatentPriorLoader().load("(none)") == (None,)
    folder = Path(__import__("os").environ["FACEREFINE_HOME"]) / "facerefine"
    save_latent_prior(fx.tiny_prior(setup["latent"]), folder / "my_prior.safetensors")
    assert "my_prior.safetensors" in FaceRefineLatentPriorLoader.INPUT_TYPES()["required"]["prior_name"][0]
    (prior,) = FaceRefineLatentPriorLoader().load("my_prior.safetensors")
    with pytest.raises(WeightsNotFoundError, match="recognition_arcface_ir_se50.pth"):
        FaceRefineIdModelLoader().load("recognition_arcface_ir_se50.pth", "(none)")
    node = FaceRefineIdentityLatentRefine()
    kw = dict(face_crops=setup["restored"], face_latent=setup["latent"], restorer=setup["restorer"],
              latent_prior=prior, id_model=fx.small_arcface(), steps=3, strength=0.5, identity_strength=1.0,
              sampler="euler", seed=3, device="cpu")
    (whole,) = node.refine(face_batch=8, **kw)
    (split,) = node.refine(face_batch=1, **kw)  # per-face noise: batching does not change the result
    assert torch.allclose(whole.crops, split.crops, atol=1e-3)
    # the tiny random restorer draws no detail: refine re-applies the lookup's exemplar detail after decoding
    assert whole.history[-1].startswith("refine:euler") and whole.history[-1].endswith("+exemplar-detail")
    assert len(whole) == 2
    (same,) = node.refine(**{**kw, "steps": 0})
    assert same is setup["restored"]


def test_pipeline_refine_only_after_a_lookup():
    from facerefine.core.pipeline import RestoreOptions, build_steps
    steps = build_steps(RestoreOptions.from_values(restorer="none", refine_steps=5))
    assert steps.refine is None and steps.names == []


def test_clear_errors_for_unusable_inputs(setup):
    import dataclasses

    from facerefine.core.refine.options import RefineOptions
    from facerefine.core.refine.refine import RefineRun, refine
    from facerefine.errors import FaceRefineError
    s = setup
    plain, three = RefineRun(s["restorer"]), RefineOptions(steps=3)
    empty = dataclasses.replace(s["latent"], quantized=torch.zeros(2, 0, 1, 1), lq_features=torch.zeros(2, 0, 1, 1))
    with pytest.raises(FaceRefineError, match="needs a codebook latent"):
        refine(s["restored"], empty, plain, three)
    wrong = build_latent_prior(latent_channels=8, cond_channels=8, latent_size=4, hidden=16, depth=1, heads=2)
    with pytest.raises(FaceRefineError, match="latent prior expects"):
        refine(s["restored"], s["latent"], RefineRun(s["restorer"], wrong), three)
    with pytest.raises(FaceRefineError, match="FACE_LATENT holds 2 faces"):
        refine(s["restored"].select([0]), s["latent"], plain, three)
    with pytest.raises(FaceRefineError, match="unknown sampler"):
        refine(s["restored"], s["latent"], plain, RefineOptions(steps=3, sampler="nope"))


def test_pipeline_step_default_prior_that_does_not_fit_falls_back(setup):
    from facerefine.core.refine.options import RefineOptions
    from facerefine.core.refine.step import RefineStep, prepare_refine
    folder = Path(__import__("os").environ["FACEREFINE_HOME"]) / "facerefine"
    wrong = build_latent_prior(latent_channels=8, cond_channels=8, latent_size=4, hidden=16, depth=1, heads=2)
    save_latent_prior(wrong, folder / "facerefine_latent_prior_iqpfr.safetensors")
    step = prepare_refine(RefineOptions(steps=2, identity_strength=0.0), "cpu")
    assert isinstance(step, RefineStep)
    notes = []
    out = step(setup["restored"], setup["latent"], setup["restorer"], warnings=notes)
    assert out.history[-1].startswith("refine:") and any("does not fit" in w for w in notes)
    assert prepare_refine(RefineOptions(steps=0), "cpu") is None