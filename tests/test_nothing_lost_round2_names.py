"""Issue 26, item 6: a long name that the file system takes is written (its temporary name fits too,
video included); a result name it cannot take is one clear error before any work."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli_json

LONG_ASCII = "p" * 225          # + "_restored.png" = 238 bytes: legal
LONG_CJK = "肖" * 76             # 228 bytes in UTF-8; + "_restored.png" = 241 bytes: legal


def _noise(path, seed=0, size=(48, 40)):
    arr = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


@pytest.mark.parametrize("stem", [LONG_ASCII, LONG_CJK], ids=["225 ascii", "76 cjk"])
def test_a_long_legal_name_is_written(capsys, tmp_path, stem):
    src = tmp_path / f"{stem}.png"
    pixels = _noise(src)
    out = tmp_path / "out"
    code, res, err = run_cli_json(capsys, "restore", src, "-o", out, "--restorer", "none", "--device", "cpu")
    assert code == 0 and res["ok"], err
    written = Path(res["results"][0]["output"])
    assert written.name == f"{stem}_restored.png"
    assert np.array_equal(np.asarray(Image.open(written).convert("RGB")), pixels)
    assert [p.name for p in out.iterdir()] == [written.name]  # no temporary file left


def test_every_temporary_name_fits_when_the_final_name_fits(tmp_path):
    from facerefine.models.tempfiles import unique_temp_path
    for name in ("a" * 255, "肖" * 85, "x.png"):
        tmp = unique_temp_path(tmp_path / name)
        assert len(tmp.name.encode()) <= 255 and tmp.parent == tmp_path and tmp.name != name
        tmp.write_bytes(b"ok")  # the file system takes it
        tmp.unlink()


def test_a_long_legal_video_name_is_written(tmp_path):
    pytest.importorskip("av")
    from test_video_io import write_clip
    from facerefine.cli import main
    stem = "v" * 237                               # + "_restored.mp4" = 250 bytes: legal
    src = tmp_path / f"{stem}.mp4"
    write_clip(src, np.full((3, 64, 64, 3), 90, np.uint8), audio=False)
    out = tmp_path / "out"
    assert main(["restore", str(src), "-o", str(out), "--restorer", "none", "--detector", "mtcnn"]) == 0
    assert [p.name for p in out.iterdir()] == [f"{stem}_restored.mp4"]


@pytest.mark.parametrize("command", ["restore", "crop"])
def test_a_result_name_too_long_fails_before_any_work(capsys, tmp_path, monkeypatch, command):
    src = tmp_path / f"{'q' * 246}.png"             # legal (250 bytes); its result name is not (259 / 257)
    _noise(src)
    ok = tmp_path / "short.png"
    _noise(ok, 1)
    from facerefine.core import image_io
    loaded = []
    monkeypatch.setattr(image_io, "load_image", lambda *a, **k: loaded.append(a) or pytest.fail("work started"))
    out = tmp_path / "out"
    argv = [command, ok, src, "--out" if command == "crop" else "-o", out, "--device", "cpu"]
    code, res, err = run_cli_json(capsys, *argv, *(["--restorer", "none"] if command == "restore" else []))
    assert code != 0 and not loaded
    text = res.get("error", "") + err
    assert "too long" in text and "q" * 20 in text
    assert not out.exists() or not any(out.iterdir())
