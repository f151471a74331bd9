"""Measured on ../shared/data/london (skips when absent): detection count, pupil error, paste round trip."""
import json

import numpy as np
import pytest
import torch

from crop_fixtures import psnr
from facerefine.core.crop.options import CropOptions
from facerefine.core.crop.step import align_faces, detect_faces
from facerefine.core.image_io import load_image
from facerefine.core.paste.options import PasteOptions
from facerefine.core.paste.step import paste_back


@pytest.fixture(scope="module")
def london_detections(request):
    from conftest import SHARED_DATA
    root = SHARED_DATA / "london"
    if not root.is_dir():
        pytest.skip("../shared/data/london not present")
    paths = sorted(root.glob("*/*.jpg"))
    results = {}
    options = CropOptions(detector="mtcnn")
    for i in range(0, len(paths), 8):
        chunk = paths[i:i + 8]
        images = torch.cat([load_image(p).image for p in chunk])
        for p, det in zip(chunk, detect_faces(images, options)):
            results[p] = det
    return results


def test_every_london_image_has_exactly_one_face(london_detections):
    assert len(london_detections) == 204
    counts = {p.name: int(d.boxes.shape[0]) for p, d in london_detections.items()}
    wrong = {k: v for k, v in counts.items() if v != 1}
    assert not wrong, f"images without exactly one face: {wrong}"


def pupil_errors(london_detections):
    errors = []
    for path, det in london_detections.items():
        marks = path.with_name(path.stem + ".landmarks.json")
        if not marks.is_file() or det.boxes.shape[0] == 0:
            continue
        pupils = np.array(json.loads(marks.read_text())["points"][:2], dtype=np.float64)
        eyes = det.landmarks[0, :2].double().numpy()
        iod = np.linalg.norm(pupils[0] - pupils[1])
        errors.append(np.linalg.norm(eyes - pupils, axis=1).mean() / iod)
    return np.array(errors)


def test_median_pupil_error_below_3_percent(london_detections):
    errors = pupil_errors(london_detections)
    assert len(errors) == 102
    assert float(np.median(errors)) < 0.03, f"median pupil error {np.median(errors):.4f} of inter-ocular distance"


@pytest.mark.parametrize("color_correction", ["none", "lab"])
def test_crop_paste_roundtrip_psnr(london_detections, color_correction):
    paths = sorted(london_detections)[::17]  # 12 images across both folders
    for path in paths:
        image = load_image(path).image
        crops = align_faces(image, [london_detections[path]])
        out, masks = paste_back(image, crops, PasteOptions(color_correction=color_correction))
        inside = masks[0] > 0
        assert inside.sum() > 10_000
        assert torch.equal(out[0][~inside], image[0][~inside]), path.name
        value = psnr(out[0][inside], image[0][inside])
        assert value >= 40, f"{path.name}: PSNR {value:.2f} dB inside the mask"
