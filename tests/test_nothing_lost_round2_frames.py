"""Issue 26, item 8: nothing is dropped silently. Animated GIF/WebP and multi-page TIFF: each result says
that only the first frame/page was restored. A float TIFF keeps its values above 1 (written as float)."""
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import run_cli_json


def _frames(n, size=(40, 48)):
    rng = np.random.default_rng(n)
    return [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(n)]


def test_animated_and_multi_page_inputs_say_only_the_first_frame_was_restored(capsys, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    first, *rest = _frames(3)
    first.save(src / "anim.gif", save_all=True, append_images=rest, duration=100, loop=0)
    first, *rest = _frames(2)
    first.save(src / "anim.webp", save_all=True, append_images=rest, duration=100, lossless=True)
    first.save(src / "pages.tif", save_all=True, append_images=rest)
    first.save(src / "still.gif")
    code, res, err = run_cli_json(capsys, "restore", src, "-o", tmp_path / "out", "--restorer", "none",
                                  "--device", "cpu")
    assert code == 0, err
    warned = {Path(r["input"]).name: " ".join(r["warnings"]) for r in res["results"]}
    assert "3 frames" in warned["anim.gif"] and "only the first" in warned["anim.gif"]
    assert "2 frames" in warned["anim.webp"] and "only the first" in warned["anim.webp"]
    assert "2 pages" in warned["pages.tif"] and "only the first" in warned["pages.tif"]
    assert "first" not in warned["still.gif"]
    capsys.readouterr()
    code = __import__("facerefine.cli", fromlist=["main"]).main(
        ["restore", str(src / "anim.gif"), "-o", str(tmp_path / "out2"), "--restorer", "none", "--device", "cpu"])
    assert code == 0 and "3 frames" in capsys.readouterr().out  # said without --json too


def _float_tiff(path):
    import cv2
    rng = np.random.default_rng(5)
    arr = rng.random((32, 40, 3), dtype=np.float32) * 4.0  # HDR-like: most values above 1
    assert cv2.imwrite(str(path), arr[..., ::-1].copy())
    return arr


def test_float_tiff_keeps_its_range(capsys, tmp_path):
    import cv2
    arr = _float_tiff(tmp_path / "hdr.tif")
    code, res, err = run_cli_json(capsys, "restore", tmp_path / "hdr.tif", "-o", tmp_path / "out", "--restorer",
                                  "none", "--device", "cpu")
    assert code == 0, err
    back = cv2.imread(res["results"][0]["output"], cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.float32 and back.max() > 3.5
    assert np.allclose(back[..., ::-1], arr, atol=1e-6)


def test_float_tiff_written_to_a_format_that_cannot_hold_it_says_so(capsys, tmp_path):
    _float_tiff(tmp_path / "hdr.tif")
    code, res, err = run_cli_json(capsys, "restore", tmp_path / "hdr.tif", "-o", tmp_path / "hdr.png",
                                  "--restorer", "none", "--device", "cpu")
    assert code == 0, err
    assert any("clipped" in w and "hdr.png" in w for w in res["results"][0]["warnings"])
