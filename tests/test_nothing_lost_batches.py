"""Issue 16, items 10 and 12: batch commands handle each file on its own and report failures at the end;
the output format is decided before any work (GIF becomes PNG in a folder, an unwritable -o is refused)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli_json

REPO = Path(__file__).resolve().parent.parent


_run = run_cli_json


@pytest.fixture
def folder_with_one_bad_file(tmp_path):
    """A folder holding a real portrait, a corrupt PNG and a second good image, plus a path that is missing."""
    skimage_data = pytest.importorskip("skimage.data")
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(skimage_data.astronaut()).save(folder / "a_astronaut.png")   # public domain, one face
    (folder / "b_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"cut off in the middle")
    Image.fromarray(np.asarray(Image.open(folder / "a_astronaut.png"))[::2, ::2]).save(folder / "c_small.jpg")
    return folder, tmp_path / "not_there.png"


def test_crop_finishes_the_folder_and_reports_the_bad_file(capsys, tmp_path, folder_with_one_bad_file):
    folder, missing = folder_with_one_bad_file
    code, res, err = _run(capsys, "crop", missing, folder, "--out", tmp_path / "crops", "--crop-size", "256",
                          "--device", "cpu")
    assert code == 1 and res["ok"] is False
    assert [Path(i["path"]).name for i in res["images"]] == ["a_astronaut.png", "c_small.jpg"]
    assert all(len(i["faces"]) == 1 and Path(i["faces"][0]["crop"]).is_file() for i in res["images"])
    assert sorted(Path(f["input"]).name for f in res["failed"]) == ["b_broken.png", "not_there.png"]
    assert "failed" in err and "b_broken.png" in err.split("failed:")[-1]  # repeated at the end


def test_score_finishes_the_folder_and_reports_the_bad_file(capsys, folder_with_one_bad_file):
    folder, missing = folder_with_one_bad_file
    code, res, err = _run(capsys, "score", folder, missing, "--metric", "face-niqe", "--device", "cpu")
    assert code == 1 and res["ok"] is False
    assert [Path(r["path"]).name for r in res["results"]] == ["a_astronaut.png", "c_small.jpg"]
    assert all(np.isfinite(r["raw"]) for r in res["results"])
    assert sorted(Path(f["input"]).name for f in res["failed"]) == ["b_broken.png", "not_there.png"]


def test_restore_goes_on_past_a_missing_path(capsys, tmp_path, folder_with_one_bad_file):
    folder, missing = folder_with_one_bad_file
    good = folder / "c_small.jpg"
    code, res, err = _run(capsys, "restore", missing, good, "-o", tmp_path / "out", "--restorer", "none",
                          "--device", "cpu")
    assert code == 1
    assert [f["input"] for f in res["failed"]] == [str(missing)] and "does not exist" in res["failed"][0]["error"]
    (done,) = res["results"]
    assert done["faces"] == 1 and Path(done["output"]).is_file()


def test_everything_fine_exits_zero(capsys, tmp_path, folder_with_one_bad_file):
    folder, _ = folder_with_one_bad_file
    code, res, _ = _run(capsys, "score", folder / "a_astronaut.png", "--metric", "face-niqe", "--device", "cpu")
    assert code == 0 and res["ok"] and res["failed"] == []


def test_gif_input_is_written_as_png_decided_up_front(capsys, tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    gif = tmp_path / "anim.gif"
    Image.fromarray(arr).save(gif)
    code, res, err = _run(capsys, "restore", gif, "-o", tmp_path / "out", "--restorer", "none", "--device", "cpu")
    assert code == 0, err
    out = Path(res["results"][0]["output"])
    assert out.name == "anim_restored.png" and out.is_file()
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), np.asarray(Image.open(gif).convert("RGB")))
    assert any("GIF" in n and "PNG" in n for n in res["notes"])


def test_unwritable_output_format_is_refused_before_any_work(tmp_path):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(photo)
    env = {**os.environ, "FACEREFINE_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    # the restorer file does not exist either: the format check must come before any model loads
    out = subprocess.run([sys.executable, "-m", "facerefine", "restore", str(photo), "-o", str(tmp_path / "x.gif"),
                          "--restorer", str(tmp_path / "missing.pth"), "--json"],
                         capture_output=True, text=True, env=env, cwd=REPO.parent, timeout=600)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "GIF cannot be written" in res["error"] and "missing.pth" not in res["error"]
    assert not (tmp_path / "x.gif").exists()
