"""Issue 16, items 1 and 3: an input is never written, an existing output is never replaced without
--overwrite, name collisions get a counter, and a bad output target is one clear error before any work."""
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli_json

REPO = Path(__file__).resolve().parent.parent


_run = run_cli_json


def _cli(*argv, preexec_fn=None):
    """The real command in a fresh process (to see tracebacks and exit codes as a user does)."""
    env = {**os.environ, "FACEREFINE_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "facerefine", *map(str, argv), "--json"], capture_output=True,
                         text=True, env=env, cwd=REPO.parent, preexec_fn=preexec_fn, timeout=600)
    return out.returncode, json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def _noise(path, seed, size=(48, 40)):
    """A small faceless RGB image: `restore --restorer none` returns it pixel for pixel."""
    arr = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_output_equal_to_the_input_never_writes_the_input(capsys, tmp_path):
    photo = tmp_path / "photo.png"
    _noise(photo, 0)
    before = photo.read_bytes()
    code, res, err = _run(capsys, "restore", photo, "-o", photo, "--restorer", "none", "--device", "cpu")
    assert code == 0, err
    assert photo.read_bytes() == before  # the input is untouched
    out = Path(res["results"][0]["output"])
    assert out != photo and out.is_file() and out.parent == tmp_path
    assert np.array_equal(_pixels(out), _pixels(photo))
    assert any("photo.png" in n and "input" in n for n in res["notes"])


def test_same_name_from_two_folders_gets_a_counter_and_both_survive(capsys, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = _noise(tmp_path / "a" / "x.png", 1), _noise(tmp_path / "b" / "x.png", 2)
    code, res, err = _run(capsys, "restore", tmp_path / "a", tmp_path / "b", "-o", tmp_path / "out",
                          "--restorer", "none", "--device", "cpu")
    assert code == 0, err
    outs = [Path(r["output"]) for r in res["results"]]
    assert [p.name for p in outs] == ["x_restored.png", "x_restored_00001.png"]
    assert np.array_equal(_pixels(outs[0]), first) and np.array_equal(_pixels(outs[1]), second)


def test_an_existing_output_is_kept_unless_overwrite(capsys, tmp_path):
    photo = tmp_path / "x.png"
    pixels = _noise(photo, 3)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    earlier = out_dir / "x_restored.png"
    earlier.write_bytes(b"an earlier result the user wants to keep")
    code, res, err = _run(capsys, "restore", photo, "-o", out_dir, "--restorer", "none", "--device", "cpu")
    assert code == 0, err
    assert earlier.read_bytes() == b"an earlier result the user wants to keep"
    assert Path(res["results"][0]["output"]).name == "x_restored_00001.png"

    code, res, err = _run(capsys, "restore", photo, "-o", out_dir, "--restorer", "none", "--device", "cpu",
                          "--overwrite")
    assert code == 0, err
    assert Path(res["results"][0]["output"]) == earlier and np.array_equal(_pixels(earlier), pixels)
    # --overwrite never reaches an input
    code, res, err = _run(capsys, "restore", photo, "-o", photo, "--restorer", "none", "--device", "cpu",
                          "--overwrite")
    assert code == 0 and Path(res["results"][0]["output"]) != photo and np.array_equal(_pixels(photo), pixels)


def test_sample_and_user_files_are_named_alike(capsys, tmp_path):
    photo = tmp_path / "mine.png"
    _noise(photo, 4)
    code, res, err = _run(capsys, "restore", photo, "--sample", "-o", tmp_path / "out", "--restorer", "none",
                          "--device", "cpu")
    assert code == 0, err
    names = {Path(r["input"]).stem: Path(r["output"]).name for r in res["results"]}
    assert names == {"mine": "mine_restored.png", "sample_astronaut_input": "sample_astronaut_input_restored.png"}
    # a second run keeps the first run's results and reuses the sample input it wrote
    code, res, err = _run(capsys, "restore", "--sample", "-o", tmp_path / "out", "--restorer", "none",
                          "--device", "cpu")
    assert code == 0, err
    (entry,) = res["results"]
    assert Path(entry["input"]).name == "sample_astronaut_input.png"
    assert Path(entry["output"]).name == "sample_astronaut_input_restored_00001.png"
    assert (tmp_path / "out" / "sample_astronaut_input_restored.png").is_file()


def test_crop_of_bmp_and_webp_with_one_stem_keeps_both(capsys, tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    face = Image.fromarray(skimage_data.astronaut())  # public domain, one face
    face.save(tmp_path / "astro.bmp")
    face.save(tmp_path / "astro.webp", quality=95)
    code, res, err = _run(capsys, "crop", tmp_path / "astro.bmp", tmp_path / "astro.webp", "--out", tmp_path / "c",
                          "--crop-size", "256", "--device", "cpu")
    assert code == 0, err
    crops = [f["crop"] for image in res["images"] for f in image["faces"]]
    assert len(crops) == 2 and len(set(crops)) == 2 and all(Path(c).is_file() for c in crops)
    bmp_crop, webp_crop = (np.asarray(Image.open(c)).astype(float) for c in crops)
    assert np.abs(bmp_crop - webp_crop).mean() < 8  # each file is the crop of its own (near-identical) image


def test_output_naming_a_file_is_one_clear_error_before_any_model_loads(tmp_path):
    photo = tmp_path / "photo.png"
    _noise(photo, 5)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a folder")
    # the restorer does not exist either: the output check must come first, before any model loads
    code, res, err = _cli("restore", photo, "-o", notes, "--restorer", tmp_path / "missing.pth")
    assert code == 1 and "Traceback" not in err
    assert "notes.txt" in res["error"] and "not a folder" in res["error"] and "missing.pth" not in res["error"]
    assert notes.read_text() == "not a folder"
    # a folder below a file cannot be created
    code, res, err = _cli("restore", photo, "-o", notes / "out", "--restorer", "none")
    assert code == 1 and "Traceback" not in err and "cannot create the folder" in res["error"]


def test_read_only_output_folder_is_one_clear_error(tmp_path):
    photo = tmp_path / "photo.png"
    _noise(photo, 6)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: permission bits do not stop writes")
        code, res, err = _cli("restore", photo, "-o", locked, "--restorer", "none")
        assert code == 1 and "Traceback" not in err and "not writable" in res["error"]
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def _small_file_limit():  # runs in the child: writes past 96 KB fail with EFBIG, as on a full disk
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (96 * 1024, 96 * 1024))


def test_a_failed_write_is_reported_per_file_and_leaves_no_temp_file(tmp_path):
    small, big = tmp_path / "small.png", tmp_path / "big.png"
    _noise(small, 7, (40, 40))
    _noise(big, 8, (300, 300))  # ~270 KB as PNG: its write fails under the limit
    out_dir = tmp_path / "out"
    code, res, err = _cli("restore", big, small, "-o", out_dir, "--restorer", "none", "--device", "cpu",
                          preexec_fn=_small_file_limit)
    assert code == 1 and "Traceback" not in err
    assert [f["input"] for f in res["failed"]] == [str(big)]
    assert "disk" in res["failed"][0]["error"] and "big_restored.png" in res["failed"][0]["error"]
    assert [Path(r["output"]).name for r in res["results"]] == ["small_restored.png"]
    assert sorted(p.name for p in out_dir.iterdir()) == ["small_restored.png"]  # no .part, no half file
