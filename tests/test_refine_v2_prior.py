"""Refine with the embedded restorer IQPFR v2: the latent prior at v2's grid sizes (crop/16), the shipped
prior and Identity Recovery Network loaded automatically, and clear errors for bad prior files."""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import refine_fixtures as fx  # noqa: E402

from facerefine.errors import FaceRefineError, WeightsFormatError, WrongArchitectureError  # noqa: E402
from facerefine.models.arch.iqpfr_v2 import IQPFRv2, IQPFRv2Config  # noqa: E402
from facerefine.models.arch.latent_prior import build_latent_prior, load_latent_prior, save_latent_prior  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
V2_FILES = ("facerefine_compact_v2.safetensors", "facerefine_compact_v2_prior.safetensors",
            "facerefine_compact_v2_identity_dlib.safetensors", "dlib_face_recognition_resnet.safetensors")


def tiny_v2_latents(size: int):
    """(clean-like latent, degraded latent) of a random-initialised v2 (real architecture) at a crop size."""
    torch.manual_seed(0)
    model = IQPFRv2(IQPFRv2Config(widths=(8, 8, 16), enc_blocks=(1, 1, 1), dec_blocks=(1, 1, 1), emb_dim=8,
                                  codebook_size=16, dim_embd=16, n_head=2, n_layers=1, quality_hidden=8)).eval()
    x = torch.rand(2, 3, size, size) * 2 - 1
    with torch.no_grad():
        lq, _ = model.encode(x)
        idx = model.logits(lq, model.film(torch.ones(2))).argmax(-1)
        return model.finish_quantize(model.code_features(idx), lq), lq


def test_interpolated_prior_runs_at_v2_grids_of_256_and_512_crops(tmp_path):
    z256, c256 = tiny_v2_latents(256)
    z512, c512 = tiny_v2_latents(512)
    assert z256.shape[-1] == 16 and z512.shape[-1] == 32
    prior = build_latent_prior(latent_channels=z256.shape[1], cond_channels=c256.shape[1], latent_size=16,
                               hidden=32, depth=1, heads=2, restorer_arch="IQPFRv2", position="interpolate",
                               cond_transform="asinh")
    with torch.no_grad():
        prior.out.weight.normal_(0, 0.05)
    # v2's real encoder output is heavy-tailed (|x| up to ~1e5): read through asinh, it stays well scaled
    c256, c512 = c256 * 1e4, c512 * 1e4
    prior.fit_statistics(z256, c256)
    assert prior.normalize_cond(c256).abs().max() < 50
    path = save_latent_prior(prior.eval(), tmp_path / "prior.safetensors")
    back = load_latent_prior(path)
    assert back.config.position == "interpolate" and back.config.cond_transform == "asinh"
    for z, c in ((z256, c256), (z512, c512)):
        back.check_latent(z, c)
        with torch.no_grad():
            out = back(back.normalize(z), torch.tensor([0.7, 0.7]), back.normalize_cond(c))
        assert out.shape == z.shape and torch.isfinite(out).all()
    # the 512 grid really uses resized positions (not the 16x16 table): they vary smoothly across the grid
    pos = back.position_for(32, 32)
    assert pos.shape == (1, 1024, 32) and not torch.equal(pos[0, 0], pos[0, 1])
    assert torch.equal(back.position_for(16, 16), back.position)
    # a fixed-grid prior refuses another grid with a clear message
    fixed = build_latent_prior(latent_channels=z256.shape[1], cond_channels=c256.shape[1], latent_size=16,
                               hidden=32, depth=1, heads=2)
    with pytest.raises(ValueError, match="latent prior expects"):
        fixed.check_latent(z512, c512)


def test_older_prior_files_without_a_position_mode_still_load(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file
    prior = build_latent_prior(latent_channels=8, cond_channels=8, latent_size=4, hidden=16, depth=1, heads=2)
    path = save_latent_prior(prior, tmp_path / "new.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        sd = {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(meta["config"])
    config.pop("position")
    old = tmp_path / "old.safetensors"
    save_file(sd, str(old), metadata={**meta, "config": json.dumps(config)})
    back = load_latent_prior(old)
    assert back.config.position == "learned" and back.config == prior.config
    shipped = WEIGHTS / "facerefine_compact_prior.safetensors"  # the v1 prior, written before position modes
    if shipped.is_file():
        assert load_latent_prior(shipped).config.position == "learned"


def test_corrupt_or_wrong_prior_file_names_the_file(tmp_path):
    from facerefine.core.refine.options import RefineOptions
    from facerefine.core.refine.step import RefineStep
    corrupt = tmp_path / "corrupt_prior.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + bytes(64))
    with pytest.raises((WeightsFormatError, WrongArchitectureError)) as err:
        load_latent_prior(corrupt)
    assert "corrupt_prior.safetensors" in str(err.value)
    from facerefine.models.loading import save_safetensors
    other = save_safetensors({"w": torch.zeros(3)}, tmp_path / "not_a_prior.safetensors")
    step = RefineStep(RefineOptions(steps=2, identity_strength=0.0, latent_prior=str(other)), "cpu")
    with pytest.raises(WrongArchitectureError, match="not_a_prior.safetensors"):
        step.prepare(type("R", (), {"architecture": "IQPFRv2", "name": "facerefine-compact-v2"})())
    # a real prior, but for another latent: refused on the first face, naming the file
    wrong = save_latent_prior(build_latent_prior(latent_channels=8, cond_channels=8, latent_size=4, hidden=16,
                                                 depth=1, heads=2), tmp_path / "other_latent_prior.safetensors")
    z, c = tiny_v2_latents(256)
    step = RefineStep(RefineOptions(steps=2, identity_strength=0.0, latent_prior=str(wrong)), "cpu")
    step.prepare(type("R", (), {"architecture": "IQPFRv2", "name": "x"})())
    latent = type("L", (), {"quantized": z, "lq_features": c, "restorer": "x"})()
    with pytest.raises(FaceRefineError, match="other_latent_prior.safetensors"):
        step._check(latent)


@pytest.mark.skipif(not all((WEIGHTS / f).is_file() for f in V2_FILES), reason="shipped v2 weights absent")
def test_refine_with_v2_loads_the_shipped_prior_and_irn_without_a_warning(monkeypatch):
    """The default restorer + `--refine-steps` (target recovery): the paired prior and dlib IRN are found in
    the registry, nothing is downloaded, no 'no trained latent prior' note, and the face changes. With the
    `auto` target and no reference the IRN is not loaded (the degraded face is the target)."""
    monkeypatch.setenv("FACEREFINE_OFFLINE", "1")
    from facerefine.models.restorers import load_restorer
    from facerefine.core.refine.options import RefineOptions
    from facerefine.core.refine.step import RefineStep
    restorer = load_restorer("facerefine-compact-v2", "cpu")
    assert restorer.architecture == "IQPFRv2"
    faces = fx.make_faces(1, 256, seed=3)
    restored, latent = fx.lookup_latent(faces, restorer)
    auto = RefineStep(RefineOptions(steps=3, identity_strength=1.0, id_model="dlib"), "cpu")
    auto.prepare(restorer)
    assert auto.prior is not None and auto.id_model.network == "dlib" and auto.id_model.recovery is None
    step = RefineStep(RefineOptions(steps=3, identity_strength=1.0, id_model="dlib", target="recovery"), "cpu")
    step.prepare(restorer)
    assert step.prior is not None and step.prior.config.restorer_arch == "IQPFRv2"
    assert step.id_model.network == "dlib" and step.id_model.recovery is not None
    notes = []
    out = step(restored, latent, restorer, warnings=notes)
    assert not notes, notes
    assert out.history[-1].startswith("refine:")
    assert (out.crops - restored.crops).abs().max() > 1e-3
    # the shipped prior runs at the 512 crop's 32x32 grid as well
    z, c = latent.quantized, latent.lq_features
    z512 = torch.nn.functional.interpolate(z, scale_factor=2.0)
    c512 = torch.nn.functional.interpolate(c, scale_factor=2.0)
    step.prior.check_latent(z512, c512)
    with torch.no_grad():
        d = step.prior(step.prior.normalize(z512), torch.tensor([0.5]), step.prior.normalize_cond(c512))
    assert d.shape == z512.shape and torch.isfinite(d).all()
