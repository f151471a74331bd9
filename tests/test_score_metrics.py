"""core/score: registry, normalisation, scoring FACE_CROPS / images, critic, offline weights, CLI, nodes."""
import json
import math

import numpy as np
import pytest
import torch

from facerefine.core import score
from facerefine.core.score import pyiqa_weights
from facerefine.core.types import FaceCrops, FaceInfo
from facerefine.errors import FaceRefineError, WeightsNotFoundError


def _smooth_face_like(n=2, size=256, seed=0):
    """Structured synthetic images (smooth shapes + mild texture), deterministic."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    imgs = []
    for i in range(n):
        face = ((xx / 0.6) ** 2 + (yy / 0.8) ** 2 < 1).float()
        eyes = (((xx - 0.25) ** 2 + (yy + 0.2) ** 2) < 0.01).float() + (((xx + 0.25) ** 2 + (yy + 0.2) ** 2) < 0.01).float()
        base = 0.35 + 0.35 * face - 0.25 * eyes + 0.05 * torch.sin(8 * xx + i)
        texture = torch.nn.functional.avg_pool2d(torch.rand(1, 1, size, size, generator=g), 3, 1, 1)[0, 0]
        img = (base + 0.08 * texture).clamp(0, 1)
        imgs.append(torch.stack([img, img * 0.9, img * 0.8]))
    return torch.stack(imgs)


def _face_crops(crops):
    faces = []
    for i in range(crops.shape[0]):
        eye = np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32)
        faces.append(FaceInfo(affine=eye, inverse_affine=eye, landmarks=np.zeros((5, 2), np.float32),
                              bbox=(0.0, 0.0, 1.0, 1.0), score=0.99, image_index=i,
                              image_size=(crops.shape[-2], crops.shape[-1])))
    return FaceCrops(crops, tuple(faces), crops.shape[-1])


def test_registry_lists_issue_metrics_and_offline_ones():
    names = score.metric_names()
    for name in ("topiq_nr-face", "musiq", "clipiqa", "maniqa", "niqe", "brisque", "piqe", "face-niqe"):
        assert name in names
    assert set(score.OFFLINE_METRICS) == {"face-iqa", "face-niqe", "piqe"}
    assert score.canonical_name("face_niqe") == "face-niqe"
    assert score.canonical_name("TOPIQ_NR-FACE") == "topiq_nr-face"
    with pytest.raises(FaceRefineError, match="unknown quality metric"):
        score.canonical_name("psnr")


def test_auto_is_the_shipped_face_iqa_and_falls_back_to_face_niqe(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))   # no pyiqa weights change nothing
    assert score.default_metric() == "face-iqa"
    assert score.canonical_name("auto") == "face-iqa"
    # a checkout that lost weights/face_iqa.safetensors: auto is the older offline face-niqe
    from facerefine.errors import WeightsNotFoundError
    from facerefine.models import locate
    real = locate.resolve

    def without_face_iqa(name, *args, **kwargs):
        if name == "face-iqa":
            raise WeightsNotFoundError("face_iqa.safetensors not found")
        return real(name, *args, **kwargs)
    monkeypatch.setattr(locate, "resolve", without_face_iqa)
    assert score.default_metric() == "face-niqe"


def test_normalize_orientation_and_range():
    info = score.get_info("piqe")
    raw = torch.tensor([0.0, 25.0, 100.0, 130.0])
    assert score.normalize(info, raw).tolist() == [1.0, 0.75, 0.0, 0.0]
    up = score.get_info("clipiqa")
    assert score.normalize(up, torch.tensor([0.2, 1.5])).tolist() == pytest.approx([0.2, 1.0])
    assert score.normalize(info, torch.tensor([130.0]), clip=False).item() == pytest.approx(-0.3)


@pytest.mark.parametrize("name", ["face-niqe", "piqe"])
def test_offline_metric_scores_face_crops(name):
    crops = _face_crops(_smooth_face_like(2, 256))
    scored = score.score_face_crops(crops, name, device="cpu")
    assert scored is not crops and crops.faces[0].quality == ()  # input not mutated
    qs = scored.latest_quality(score.canonical_name(name))
    for q in qs:
        assert q.metric == score.canonical_name(name) and q.lower_better
        assert math.isfinite(q.raw) and 0.0 <= q.normalized <= 1.0
    again = score.score_face_crops(scored, name, device="cpu")
    assert len(again.faces[0].quality) == 1  # same metric replaces, never duplicates
    assert torch.equal(scored.crops, crops.crops)


def test_face_niqe_prefers_clean_over_noisy_synthetic():
    x = _smooth_face_like(2, 256)
    noisy = (x + 0.08 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    m = score.get_metric("face-niqe", "cpu")
    assert (m.normalized(x) > m.normalized(noisy)).all()


def test_score_images_layout_and_errors():
    x = _smooth_face_like(1, 128).permute(0, 2, 3, 1)  # IMAGE layout
    qs = score.score_images(x, "piqe")
    assert len(qs) == 1 and qs[0].metric == "piqe"
    rgba = torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)
    assert score.score_images(rgba, "piqe")[0].raw == pytest.approx(qs[0].raw)
    with pytest.raises(FaceRefineError):
        score.score_images(torch.zeros(1, 8, 8, 3), "piqe")  # too small
    with pytest.raises(FaceRefineError):
        score.score_images(torch.full((1, 64, 64, 3), float("nan")), "piqe")


def test_empty_face_crops_pass_through():
    empty = FaceCrops.empty(512)
    assert score.score_face_crops(empty, "piqe") is empty


def test_face_niqe_critic_has_gradients_and_matches_metric():
    critic = score.get_critic("face-niqe", "cpu")
    x = _smooth_face_like(2, 256).requires_grad_(True)
    value = critic(x)
    assert value.shape == (2,) and value.requires_grad
    value.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    m = score.get_metric("face-niqe", "cpu")
    assert value.detach() == pytest.approx(m.normalized(x.detach()), abs=1e-4)


def test_critic_refused_for_non_differentiable_metric():
    with pytest.raises(FaceRefineError, match="no useful gradients"):
        score.get_critic("piqe", "cpu")


def test_gradient_ascent_on_face_niqe_improves_score():
    """The critic's gradient points toward higher quality (what lookup/refine rely on)."""
    critic = score.get_critic("face-niqe", "cpu")
    clean = _smooth_face_like(1, 256)
    x = (clean + 0.06 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    start = critic(x).item()
    x = x.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=2e-3)
    for _ in range(6):
        opt.zero_grad()
        (-critic(x.clamp(0, 1)).sum()).backward()
        opt.step()
    assert critic(x.detach().clamp(0, 1)).item() > start


def test_learned_metric_offline_names_file_and_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    score.clear_cache()
    with pytest.raises(WeightsNotFoundError) as err:
        score.get_metric("topiq_nr-face", "cpu")
    msg = str(err.value)
    assert "topiq_nr_cgfiqa_res50-0a8b8e4f.pth" in msg and "pyiqa" in msg and "face-niqe" in msg
    assert str(tmp_path / "facerefine_home" / "pyiqa") in msg


def test_pyiqa_weights_found_in_facerefine_pyiqa_folder(tmp_path, monkeypatch):
    """A NIQE parameter file in $FACEREFINE_HOME/pyiqa (like ComfyUI models/pyiqa) is what pyiqa loads."""
    import scipy.io
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    folder = tmp_path / "facerefine_home" / "pyiqa"
    folder.mkdir(parents=True)
    face = score.get_metric("face-niqe", "cpu").module
    rng = np.random.default_rng(0)
    mu = rng.normal(size=36)
    a = rng.normal(size=(36, 36))
    scipy.io.savemat(folder / "niqe_modelparameters.mat", {"mu_prisparam": mu[None], "cov_prisparam": a @ a.T})
    assert pyiqa_weights.find_file("niqe_modelparameters.mat", "pyiqa") == folder / "niqe_modelparameters.mat"
    score.clear_cache()
    m = score.get_metric("niqe", "cpu")
    assert np.allclose(m.module.mu_pris_param.numpy(), mu)
    raw = m.raw(_smooth_face_like(1, 192))
    assert torch.isfinite(raw).all()
    assert face is not None
    # pyiqa torch-module metrics work as critics too: gradients reach the pixels
    x = _smooth_face_like(1, 192).requires_grad_(True)
    value = score.get_critic("niqe", "cpu")(x)
    value.sum().backward()
    assert value.item() == pytest.approx(float(score.normalize(m.info, raw, clip=False)), abs=1e-3)
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    score.clear_cache()


def test_cli_score_json(tmp_path, capsys):
    from PIL import Image
    from facerefine.cli import main
    img = (_smooth_face_like(1, 128)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    path = tmp_path / "face.png"
    Image.fromarray(img).save(path)
    assert main(["score", str(path), "--metric", "piqe", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    r = out["results"][0]
    assert r["path"] == str(path) and r["metric"] == "piqe" and r["lower_better"] is True
    assert 0.0 <= r["normalized"] <= 1.0 and r["raw"] >= 0
    assert main(["score", str(path), "--metric", "nope", "--json"]) == 1


def test_nodes_quality_score_faces_and_image():
    from facerefine.nodes.score_nodes import NODES, FaceRefineLoadIQA, FaceRefineQualityScore
    assert "FaceRefineQualityScore" in NODES and "FaceRefineLoadIQA" in NODES
    assert "face-niqe" in FaceRefineQualityScore.INPUT_TYPES()["required"]["metric"][0]
    (iqa,) = FaceRefineLoadIQA().load("piqe", "cpu")
    crops = _face_crops(_smooth_face_like(2, 128))
    out = FaceRefineQualityScore().score("face-niqe", face_crops=crops, iqa=iqa, device="cpu")
    result = out["result"] if isinstance(out, dict) else out
    scored, mean, text = result
    assert [q.metric for q in scored.latest_quality()] == ["piqe", "piqe"]
    assert 0.0 <= mean <= 1.0 and text.count("\n") == 1 and "face 1" in text
    out = FaceRefineQualityScore().score("piqe", image=_smooth_face_like(1, 96).permute(0, 2, 3, 1), device="cpu")
    result = out["result"] if isinstance(out, dict) else out
    assert result[0].is_empty and "image 0" in result[2]
    with pytest.raises(FaceRefineError):
        FaceRefineQualityScore().score("piqe")


def test_time_per_face_reports_positive_time():
    t = score.time_per_face("piqe", size=64, faces=1, repeats=1)
    assert t["seconds_per_face"] > 0 and t["metric"] == "piqe"
