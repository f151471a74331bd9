"""The embedded identity network (dlib's face-recognition ResNet in torch): parity with dlib itself,
in-graph chip alignment, identity guidance with it, offline refine, and bad weights files."""
import json
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import refine_fixtures as fx  # noqa: E402

from facerefine.core.lookup.options import LookupOptions  # noqa: E402
from facerefine.core.refine.options import RefineOptions  # noqa: E402
from facerefine.core.refine.reference import ReferenceFace  # noqa: E402
from facerefine.core.refine.refine import RefineRun, refine_latent  # noqa: E402
from facerefine.errors import FaceRefineError, WeightsFormatError, WrongArchitectureError  # noqa: E402
from facerefine.models.arch.identity import DLIB_ARCH, load_dlib, load_id_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _dlib_and_models():
    """dlib (dlib-bin) and face-recognition-models: the eval/test extra. Skips with the reason if absent."""
    try:
        import dlib
    except ImportError as err:
        pytest.skip(f"dlib-bin is not installed ({err}); install the test extra: pip install -e .[eval]")
    import importlib.util
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None:
        pytest.skip("face-recognition-models is not installed; install the test extra: pip install -e .[eval]")
    return dlib, Path(list(spec.submodule_search_locations)[0]) / "models"


def _rgb(path):
    import cv2
    return np.ascontiguousarray(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))


def _cos(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_port_matches_dlib_on_10_london_faces(london_dir):
    """The torch port (embedded fp16 weights) vs dlib's own network, on dlib's own 150x150 chips, and the
    in-graph chip (crop step + its 5 landmarks) vs dlib's whole detector/shape/chip pipeline."""
    dlib, models = _dlib_and_models()
    from facerefine.core.crop.options import CropOptions
    from facerefine.core.crop.step import crop_faces
    from facerefine.core.crop.landmarks import crop_landmarks
    detector = dlib.get_frontal_face_detector()
    shapes = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    rec = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
    embedder = load_dlib()
    assert sum(isinstance(m, torch.nn.Conv2d) for m in embedder.net.modules()) == 29
    files = sorted((london_dir / "neutral").glob("*.jpg"))[:10]
    assert len(files) == 10
    port, graph = [], []
    for f in files:
        img = _rgb(f)
        dets = detector(img, 1)
        assert len(dets) == 1, f
        shape = shapes(img, dets[0])
        chip = dlib.get_face_chip(img, shape, 150, 0.25)
        theirs = np.array(rec.compute_face_descriptor(chip))
        with torch.no_grad():
            ours = embedder.net(torch.from_numpy(chip).permute(2, 0, 1)[None].float() / 255)[0].numpy()
        port.append(_cos(theirs, ours))
        assert abs(np.linalg.norm(ours) / np.linalg.norm(theirs) - 1) < 0.01
        full = np.array(rec.compute_face_descriptor(img, shape))
        crops = crop_faces(torch.from_numpy(img).float()[None] / 255, CropOptions(crop_size=512))
        with torch.no_grad():
            emb = embedder(crops.crops, torch.from_numpy(crop_landmarks(crops)).float())[0].numpy()
        graph.append(_cos(full, emb))
    assert min(port) >= 0.999, port
    assert min(graph) >= 0.99, graph  # measured 0.997-0.999: other landmarks, bilinear vs dlib's pyramid


def test_chip_alignment_is_differentiable_and_follows_landmarks():
    embedder = load_dlib()
    faces = fx.make_faces(2, 256, seed=3)
    x = faces.crops.clone().requires_grad_(True)
    from facerefine.core.crop.landmarks import crop_landmarks
    lm = torch.from_numpy(crop_landmarks(faces)).float()
    embedder(x, lm).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    # the chip follows the landmarks: shifting them by 8 crop pixels shifts the chip content
    base = embedder.chips(faces.crops, lm)
    moved = embedder.chips(faces.crops, lm + 8 / 256)
    assert base.shape == (2, 3, 150, 150) and not torch.allclose(base, moved)


@pytest.fixture(scope="module")
def setup():
    """A real London face, degraded (48 px), through the embedded compact restorer and its latent prior."""
    from conftest import SHARED_DATA

    from facerefine.core.crop.options import CropOptions

    from facerefine.core.crop.step import crop_faces
    from facerefine.core.lookup.lookup import lookup
    from facerefine.models.restorers import load_restorer
    from facerefine.core.refine.step import load_prior
    london = SHARED_DATA / "london"
    if not london.is_dir():
        pytest.skip("../shared/data/london not present")
    faces = crop_faces(torch.from_numpy(_rgb(london / "neutral" / "005_03.jpg")).float()[None] / 255,
                       CropOptions(crop_size=512))
    small = torch.nn.functional.interpolate(faces.crops, size=(48, 48), mode="bilinear", antialias=True)
    lq = faces.with_crops(torch.nn.functional.interpolate(small, size=(512, 512), mode="bilinear"), "degrade")
    restorer = load_restorer("facerefine-compact", "cpu")
    restored, latent = lookup(lq, restorer, LookupOptions(quality=1.0, fidelity=0.5))
    prior = load_prior(None, "cpu", latent.architecture, restorer.name, [])
    other = torch.from_numpy(_rgb(london / "neutral" / "010_03.jpg")).float()[None] / 255  # another person
    return dict(restorer=restorer, lq=lq, restored=restored, latent=latent, prior=prior,
                id_model=load_id_model("dlib"), other=other)


def _run(s, reference=None, **kw):
    # guidance mechanics: the full strength for every face (no detail gating), no reference detail on top
    args = dict(steps=6, strength=0.4, identity_strength=0.0, guidance_steps=6, gate_by_detail=False,
                reference_detail=0.0)
    args.update(kw)
    face = None if reference is None else ReferenceFace.from_photo(reference, s["restored"].crop_size)
    context = RefineRun(s["restorer"], s["prior"], s["id_model"], face, seed=0)
    return refine_latent(s["restored"], s["latent"], context, RefineOptions(**args), s["lq"].crops)


def test_dlib_guidance_raises_its_own_similarity_monotonically(setup):
    """Towards another person's photo (reference target): the guide's similarity rises with strength."""
    s = setup
    assert s["id_model"].network == "dlib" and s["prior"] is not None
    ref = ReferenceFace.from_photo(s["other"], 512)
    with torch.no_grad():
        target = s["id_model"].embed(ref.crop, ref.landmarks)
    sims = []
    for strength in (0.0, 0.5, 1.0, 2.0):
        res = _run(s, identity_strength=strength, reference=s["other"])
        with torch.no_grad():
            sim = (s["id_model"].embed(res.crops.crops, _landmarks(res.crops)) * target).sum(1)
        if strength:
            assert res.target_source == "reference" and res.info["identity_network"] == "dlib"
            assert torch.allclose(res.similarity_after, sim, atol=1e-4)
        sims.append(float(sim.mean()))
    assert all(b > a for a, b in zip(sims, sims[1:])), sims


def _landmarks(face_crops):
    from facerefine.core.crop.landmarks import crop_landmarks
    return torch.from_numpy(crop_landmarks(face_crops)).float()


def test_dlib_guidance_leaves_positions_outside_the_mask_bit_identical(setup):
    plain = _run(setup, identity_strength=0.0)
    guided = _run(setup, identity_strength=2.0, reference=setup["other"])
    outside = ~guided.mask.bool().expand_as(guided.latent)
    assert 0 < int(outside.sum()) < outside.numel()
    assert torch.equal(guided.latent[outside], plain.latent[outside])
    assert not torch.equal(guided.latent[~outside], plain.latent[~outside])


def test_auto_picks_arcface_when_present_else_dlib(tmp_path, monkeypatch):
    from facerefine.models.arch.identity import resolve_id_model
    assert resolve_id_model("auto") == "dlib"  # empty FACEREFINE_HOME, offline
    home = Path(__import__("os").environ["FACEREFINE_HOME"]) / "facedetection"
    home.mkdir(parents=True)
    (home / "recognition_arcface_ir_se50.pth").write_bytes(b"x")
    assert resolve_id_model("auto") == "arcface"
    assert resolve_id_model("dlib") == "dlib"


def _block_sockets(monkeypatch):
    def refuse(*a, **k):
        raise OSError("network disabled by the test")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_offline_restore_with_refine_uses_the_embedded_network(tmp_path, london_dir, monkeypatch, capsys):
    """`restore --refine-steps 4` on a fresh machine: offline, sockets refused, no ArcFace on disk."""
    import facerefine.models.arch.identity as identity
    from facerefine.cli import main
    _block_sockets(monkeypatch)
    calls = []
    real = identity.load_dlib
    monkeypatch.setattr(identity, "load_dlib", lambda *a, **k: calls.append(a) or real(*a, **k))
    image = sorted((london_dir / "neutral").glob("*.jpg"))[0]
    code = main(["restore", str(image), "-o", str(tmp_path / "out.png"), "--refine-steps", "4",
                 "--device", "cpu", "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0, out
    assert (tmp_path / "out.png").is_file() and calls
    assert out["results"][0]["faces"] == 1
    assert out["results"][0]["history"][-1].startswith("refine:")


def test_corrupt_or_wrong_identity_weights_name_the_file(tmp_path):
    real = load_dlib().net.state_dict()
    corrupt = tmp_path / "corrupt_identity.safetensors"
    corrupt.write_bytes(b"\x00" * 64 + b"not a safetensors file")
    truncated = tmp_path / "truncated_identity.safetensors"
    src = Path(__file__).resolve().parent.parent / "weights" / "dlib_face_recognition_resnet.safetensors"
    truncated.write_bytes(src.read_bytes()[:100_000])
    for bad in (corrupt, truncated):
        with pytest.raises(WeightsFormatError, match=bad.name):
            load_id_model(str(bad))
    from facerefine.models.loading import save_safetensors
    # the dlib architecture label but other shapes (a 64-d head)
    shapes = dict(real, **{"fc.weight": torch.zeros(64, 256)})
    wrong = save_safetensors(shapes, tmp_path / "wrong_head.safetensors", metadata={"architecture": DLIB_ARCH})
    with pytest.raises(WrongArchitectureError, match="wrong_head.safetensors"):
        load_id_model(str(wrong))
    # a file of another network altogether
    other = save_safetensors({"encoder.weight": torch.zeros(4, 4)}, tmp_path / "not_identity.safetensors")
    with pytest.raises(WrongArchitectureError, match="not_identity.safetensors") as err:
        load_id_model(str(other))
    assert "expected" in str(err.value)
    # missing keys of the dlib network
    partial = save_safetensors({k: v for k, v in real.items() if not k.startswith("blocks.13")},
                               tmp_path / "partial.safetensors", metadata={"architecture": DLIB_ARCH})
    with pytest.raises(WrongArchitectureError, match="partial.safetensors"):
        load_id_model(str(partial))
    # the CLI reports it as one clear error (exit 1), not a traceback
    assert issubclass(WrongArchitectureError, FaceRefineError)


def test_augmented_views_keep_the_face_as_view_zero_and_pass_gradients():
    from facerefine.core.refine.guidance import augmented_views
    faces = torch.rand(2, 3, 64, 64, requires_grad=True)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (0, 1)]  # noqa: E731
    views = augmented_views(faces, 4, gens())
    assert views.shape == (8, 3, 64, 64)
    assert torch.equal(views[0], faces[0]) and torch.equal(views[4], faces[1])
    assert not torch.allclose(views[1], faces[0], atol=1e-3)  # a real re-framing, not a copy
    again = augmented_views(faces, 4, gens())
    assert torch.equal(views, again)  # seeded: the same views for the same seed
    alone = augmented_views(faces[1:], 4, gens()[1:])
    assert torch.equal(alone, views[4:])  # a face's views do not depend on its batch
    views[1:4].sum().backward()  # the augmented views alone reach the face
    assert faces.grad is not None and float(faces.grad[0].abs().sum()) > 0 and float(faces.grad[1].abs().sum()) == 0
    assert augmented_views(faces, 1) is faces


def test_identity_views_guidance_moves_toward_the_target_and_keeps_the_mask(setup):
    """Averaging the gradient over augmented views still raises the guide's similarity, is reproducible,
    and still leaves positions outside the latent mask untouched."""
    s = setup
    ref = ReferenceFace.from_photo(s["other"], 512)
    with torch.no_grad():
        target = s["id_model"].embed(ref.crop, ref.landmarks)
    plain = _run(s, identity_strength=0.0)
    guided = _run(s, identity_strength=2.0, reference=s["other"], identity_views=4)
    again = _run(s, identity_strength=2.0, reference=s["other"], identity_views=4)
    assert torch.equal(guided.latent, again.latent)
    outside = ~guided.mask.bool().expand_as(guided.latent)
    assert torch.equal(guided.latent[outside], plain.latent[outside])
    with torch.no_grad():
        sims = [float((s["id_model"].embed(r.crops.crops, _landmarks(r.crops)) * target).sum(1).mean())
                for r in (plain, guided)]
    assert sims[1] > sims[0] + 0.005, sims
    with pytest.raises(Exception, match="identity_views"):
        _run(s, identity_strength=1.0, reference=s["other"], identity_views=0)


def test_guidance_stops_at_same_person_similarity(setup):
    """A face that already matches its target as closely as two photos of one person do gets no identity
    gradient (the hinge), so guidance cannot pull it toward the reference's expression or the LQ's blur."""
    s = setup
    plain = _run(s, identity_strength=0.0, reference_detail=0.0)
    own = _run(s, identity_strength=2.0, reference=s["restored"], reference_detail=0.0)  # itself as reference
    assert own.info["identity_strength_per_face"] == [0.0]
    assert torch.equal(own.latent, plain.latent)
    other = _run(s, identity_strength=2.0, reference=s["other"], reference_detail=0.0)
    assert not torch.equal(other.latent, plain.latent)
    # inside one gradient: faces at or above the margin get exactly zero
    from facerefine.core.refine.guidance import IdentityGoal, identity_gradient
    z = torch.randn(2, 4, 3, 3)
    decode = lambda x: x.mean(1, keepdim=True).expand(-1, 3, -1, -1)  # noqa: E731
    model = type("M", (), {"embed": staticmethod(lambda f: torch.nn.functional.normalize(f.flatten(1), dim=1))})()
    target = torch.nn.functional.normalize(decode(z).flatten(1), dim=1)
    target[1] = torch.nn.functional.normalize(torch.randn(27), dim=0)  # face 1 far from its target
    grad, sim = identity_gradient(z, decode, model, IdentityGoal(target, torch.ones(2, 1, 3, 3), margin=0.99))
    assert float(sim[0]) > 0.99 and float(grad[0].abs().sum()) == 0 and float(grad[1].abs().sum()) > 0
