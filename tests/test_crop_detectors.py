"""Detector backends: the embedded MTCNN and facexlib RetinaFace wiring (offline, no downloads)."""
import hashlib

import pytest
import torch

from facerefine.models import cache as model_cache
from facerefine.core.crop.options import CropOptions

from facerefine.core.crop.step import crop_faces, detect_faces
from facerefine.core.crop import detectors
from facerefine.core.crop.mtcnn import MTCNN
from facerefine.errors import WeightsNotFoundError
from facerefine.models.arch.mtcnn import MTCNNNets, ONet, PNet, RNet
from facerefine.models.locate import resolve
from facerefine.models.registry import get_spec


@pytest.fixture(autouse=True)
def _fresh_detectors():
    model_cache.clear("detector")
    yield
    model_cache.clear("detector")


def test_mtcnn_net_shapes():
    reg, prob = PNet()(torch.rand(2, 3, 40, 52))
    assert reg.shape == (2, 4, 15, 21) and prob.shape == (2, 15, 21)
    reg, prob = RNet()(torch.rand(5, 3, 24, 24))
    assert reg.shape == (5, 4) and prob.shape == (5,)
    reg, marks, prob = ONet()(torch.rand(3, 3, 48, 48))
    assert reg.shape == (3, 4) and marks.shape == (3, 10) and ((prob >= 0) & (prob <= 1)).all()


def test_embedded_weights_are_registered_and_intact():
    spec = get_spec("mtcnn")
    assert spec.embedded and spec.folder == "facedetection" and "MIT" in spec.license
    path = resolve("mtcnn", "facedetection", download=False)
    assert path.stat().st_size == spec.size
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256


def test_random_mtcnn_cascade_runs_on_a_batch():
    torch.manual_seed(0)
    cascade = MTCNN(MTCNNNets(), thresholds=(0.0, 0.0, 0.0))  # accept everything: exercises every stage
    out = cascade(torch.rand(2, 3, 64, 80) * 255, min_face=20)
    assert len(out) == 2
    for det in out:
        assert det.boxes.shape[1:] == (4,) and det.landmarks.shape[1:] == (5, 2)
        assert det.boxes.shape[0] == det.scores.shape[0] == det.landmarks.shape[0] > 0


def test_auto_uses_the_embedded_detector_offline():
    assert detectors.resolve_name("auto") == "mtcnn"
    assert detectors.load_detector("auto").name == "mtcnn"


def test_no_face_in_noise_gives_empty_crops_and_warning():
    g = torch.Generator().manual_seed(0)
    with pytest.warns(RuntimeWarning, match="no face"):
        crops = crop_faces(torch.rand(1, 96, 128, 3, generator=g) * 0.1 + 0.45)
    assert crops.is_empty


def test_retinaface_missing_weights_names_file_and_url_without_downloading():
    with pytest.raises(WeightsNotFoundError) as info:
        detect_faces(torch.rand(1, 64, 64, 3), CropOptions(detector="retinaface"))
    msg = str(info.value)
    assert "detection_Resnet50_Final.pth" in msg and "FACEREFINE_OFFLINE" in msg and "github.com" in msg


def test_retinaface_backend_with_random_weights(tmp_path, monkeypatch):
    """A random-initialised facexlib RetinaFace (mobilenet0.25) saved where the registry looks."""
    import os
    home = os.environ["FACEREFINE_HOME"]
    model = detectors.build_retinaface("mobile0.25", torch.device("cpu"))
    target = resolve.__globals__["home_dir"]() / "facedetection"
    target.mkdir(parents=True, exist_ok=True)
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()},
               target / "detection_mobilenet0.25_Final.pth")
    assert str(target).startswith(home)
    det = detectors.load_detector("retinaface-mobilenet")
    out = det.detect(torch.rand(2, 3, 96, 96) * 255)
    assert len(out) == 2 and all(d.landmarks.shape[1:] == (5, 2) for d in out)
    crops = crop_faces(torch.rand(1, 96, 96, 3), CropOptions(detector="retinaface-mobilenet", det_threshold=0.0,
                                                             max_faces=2))
    assert len(crops) <= 2


def test_auto_prefers_retinaface_when_its_weights_exist(monkeypatch):
    monkeypatch.setattr(detectors, "retinaface_available", lambda name="retinaface": True)
    assert detectors.resolve_name("auto") == "retinaface"
