"""`crop` and `restore --restorer none` from the command line, offline."""
import json

import numpy as np
import pytest
from PIL import Image

from facerefine.cli import main
from facerefine.core.image_io import load_image


def _run(capsys, *argv):
    code = main(list(argv) + ["--json"])
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1])


@pytest.fixture
def london_image(london_dir):
    return sorted((london_dir / "neutral").glob("*.jpg"))[0]


def test_crop_writes_crops_and_json(capsys, tmp_path, london_image):
    code, res = _run(capsys, "crop", str(london_image), "--out", str(tmp_path / "crops"), "--crop-size", "256")
    assert code == 0 and res["ok"] and res["faces"] == 1 and res["detector"] == "mtcnn"
    face = res["images"][0]["faces"][0]
    assert len(face["bbox"]) == 4 and np.array(face["landmarks"]).shape == (5, 2) and face["score"] > 0.9
    assert Image.open(face["crop"]).size == (256, 256)


def test_crop_without_a_face_reports_a_warning(capsys, tmp_path):
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(tmp_path / "flat.png")
    code, res = _run(capsys, "crop", str(tmp_path / "flat.png"), "--out", str(tmp_path / "c"))
    assert code == 0 and res["faces"] == 0 and res["images"][0]["warnings"]


def test_restore_none_keeps_faceless_rgba_16bit_exactly(capsys, tmp_path):
    import cv2
    rng = np.random.default_rng(0)
    bgra = (rng.random((40, 50, 4)) * 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "in.png"), bgra)
    code, res = _run(capsys, "restore", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"),
                     "--restorer", "none", "--device", "cpu")
    assert code == 0 and res["results"][0]["faces"] == 0 and res["results"][0]["warnings"]
    back = cv2.imread(str(tmp_path / "out.png"), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and np.array_equal(back, bgra)


def test_restore_none_on_a_portrait(capsys, tmp_path, london_image):
    code, res = _run(capsys, "restore", str(london_image), "-o", str(tmp_path / "out"), "--restorer", "none",
                     "--save-mask", "--color-correction", "none")
    assert code == 0 and res["faces"] == 1
    entry = res["results"][0]
    assert set(res["timings"]) >= {"detect", "align", "paste"}
    before, after = load_image(london_image).image[0], load_image(entry["output"]).image[0]
    mask = load_image(entry["mask"]).image[0, ..., 0]
    assert mask.max() == 1.0 and mask.mean() < 0.5
    # JPEG re-encoding aside, the face is where it was
    assert float(((after - before) ** 2).mean()) < 1e-3


def test_restore_unknown_restorer_is_a_clean_error(capsys, tmp_path):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    code, res = _run(capsys, "restore", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"),
                     "--restorer", str(tmp_path / "missing.pth"))
    assert code != 0 and res["ok"] is False and res["error"]


def test_restore_missing_input_is_a_clean_error(capsys, tmp_path):
    code, res = _run(capsys, "restore", str(tmp_path / "nope.png"), "-o", str(tmp_path / "o"))
    assert code == 1 and "does not exist" in res["error"]
