"""Issue 26, item 1: two runs writing one folder never lose a result.

Each test lets a second, real `python -m facerefine` process write the same output name at the worst
moment for the first run (just before its write, after its names were decided), and checks that
both results exist as distinct files with their own pixels."""
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
TESTS = Path(__file__).resolve().parent

# for `crop` the child finds one face filling any image (no detector weights needed); then the real command
_ONE_FACE = r"""
import torch
from facerefine.core.crop.align import FFHQ_TEMPLATE_512
from facerefine.core.types import RawDetections

def one_face(images, options, timings=None):
    h, w = images.shape[1:3]
    marks = torch.tensor(FFHQ_TEMPLATE_512, dtype=torch.float32)[None] * torch.tensor([w / 512, h / 512])
    return [RawDetections(torch.tensor([[0.0, 0.0, w, h]]), torch.tensor([0.99]), marks)] * images.shape[0]
"""
_CHILD = _ONE_FACE + r"""
import sys
from facerefine.core.crop import step as crop
if sys.argv[1] == "crop":
    crop.detect_faces = one_face
from facerefine.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _other_process(*argv):
    """The same command in a second, real process; returns its JSON."""
    env = {**os.environ, "FACEREFINE_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", _CHILD, *map(str, argv), "--json"], capture_output=True, text=True,
                         env=env, cwd=REPO.parent, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _noise(path, seed, size=(72, 64)):
    arr = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def _two_inputs(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    return (tmp_path / "a" / "face.png", _noise(tmp_path / "a" / "face.png", 1),
            tmp_path / "b" / "face.png", _noise(tmp_path / "b" / "face.png", 2))


def _other_run_writes_first(monkeypatch, module, name, argv):
    """Patch ``module.name`` so that on its first call the other process runs ``argv`` to the end."""
    real, other = getattr(module, name), []

    def wrapped(*a, **k):
        if not other:
            other.append(_other_process(*argv))
        return real(*a, **k)
    monkeypatch.setattr(module, name, wrapped)
    return other


def test_two_restore_processes_into_one_folder_keep_both_results(capsys, tmp_path, monkeypatch):
    a, a_pixels, b, b_pixels = _two_inputs(tmp_path)
    out = tmp_path / "out"
    from facerefine.core import image_io
    other = _other_run_writes_first(monkeypatch, image_io, "save_image",
                                    ["restore", b, "-o", out, "--restorer", "none", "--device", "cpu"])
    code, res, err = run_cli_json(capsys, "restore", a, "-o", out, "--restorer", "none", "--device", "cpu")
    assert code == 0 and res["ok"], err
    mine, theirs = Path(res["results"][0]["output"]), Path(other[0]["results"][0]["output"])
    assert mine != theirs
    assert sorted(p.name for p in out.iterdir()) == ["face_restored.png", "face_restored_00001.png"]
    assert np.array_equal(_pixels(mine), a_pixels) and np.array_equal(_pixels(theirs), b_pixels)


def test_two_crop_processes_into_one_folder_keep_both_crops(capsys, tmp_path, monkeypatch):
    a, a_pixels, b, b_pixels = _two_inputs(tmp_path)
    out = tmp_path / "crops"
    found = {}
    exec(_ONE_FACE, found)
    from facerefine.core.crop import step as crop
    monkeypatch.setattr(crop, "detect_faces", found["one_face"])  # the child's one-face detector here too
    from facerefine.core import image_io
    other = _other_run_writes_first(monkeypatch, image_io, "save_image",
                                    ["crop", b, "--out", out, "--crop-size", "256", "--device", "cpu"])
    code, res, err = run_cli_json(capsys, "crop", a, "--out", out, "--crop-size", "256", "--device", "cpu")
    assert code == 0 and res["ok"], err
    mine = Path(res["images"][0]["faces"][0]["crop"])
    theirs = Path(other[0]["images"][0]["faces"][0]["crop"])
    assert mine != theirs and mine.is_file() and theirs.is_file()
    assert sorted(p.name for p in out.iterdir()) == ["face_face00.png", "face_face00_00001.png"]
    assert not np.array_equal(_pixels(mine), _pixels(theirs))  # two different photos, two different crops


def test_two_video_processes_into_one_folder_keep_both_clips(tmp_path, monkeypatch):
    av = pytest.importorskip("av")  # noqa: F841
    from test_video_io import decode_all, write_clip
    from facerefine.cli import main
    from facerefine.core.video import io as video_io
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = tmp_path / "a" / "clip.mp4", tmp_path / "b" / "clip.mp4"
    write_clip(a, np.full((3, 64, 64, 3), 40, np.uint8), audio=False)
    write_clip(b, np.full((3, 64, 64, 3), 210, np.uint8), audio=False)
    out = tmp_path / "out"
    other = _other_run_writes_first(monkeypatch, video_io.VideoWriter, "write",
                                    ["restore", b, "-o", out, "--restorer", "none", "--detector", "mtcnn"])
    assert main(["restore", str(a), "-o", str(out), "--restorer", "none", "--detector", "mtcnn"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["clip_restored.mp4", "clip_restored_00001.mp4"]
    theirs = Path(other[0]["results"][0]["output"])
    mine = next(p for p in out.iterdir() if p != theirs)
    assert abs(float(decode_all(mine).mean()) - 40) < 3 and abs(float(decode_all(theirs).mean()) - 210) < 3


def test_two_namers_racing_for_one_name_get_two_names(tmp_path):
    """Two runs decided the same free name; reserving it on disk gives each its own."""
    from facerefine.core.output_paths import OutputNamer
    first, second = OutputNamer(), OutputNamer()
    wanted = tmp_path / "x_restored.png"
    a, b = first.claim(wanted), second.claim(wanted)
    assert a == b == wanted  # both saw a free name
    got = [first.reserve(a), second.reserve(b)]
    assert got[0] != got[1] and all(p.is_file() for p in got)
    assert got[1].name == "x_restored_00001.png"
