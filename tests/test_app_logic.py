"""The gradio app without a browser: CLI options, upload handling and messages."""
import argparse
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from facerefine.cli import app_cmd  # noqa: E402
from facerefine.ui import service  # noqa: E402


def parse(*argv):
    p = argparse.ArgumentParser()
    app_cmd.add_arguments(p)
    return p.parse_args(list(argv))


def test_listen_is_opt_in():
    assert parse().listen is None and parse().port == 7860
    assert parse("--listen").listen == "0.0.0.0"
    assert parse("--listen", "192.168.1.5", "--port", "9000").listen == "192.168.1.5"


def test_bad_port_is_a_user_error():
    from facerefine.errors import FaceRefineError
    with pytest.raises(FaceRefineError, match="port"):
        app_cmd.run(parse("--port", "70000"))


def test_command_is_registered():
    from facerefine.cli import build_parser
    args = build_parser().parse_args(["app", "--port", "8123"])
    assert args._module is app_cmd and args.port == 8123


class Progress:
    def __init__(self):
        self.calls = []

    def __call__(self, value, desc=None):
        self.calls.append((value, desc))


def restore_uploads(paths, tmp_path, settings=None, max_mp=service.DEFAULT_MAX_MEGAPIXELS):
    pytest.importorskip("gradio")
    from facerefine.ui import gradio_app
    progress = Progress()
    out = gradio_app._restore_uploads_or_raise([str(p) for p in paths], settings or service.Settings(),
                                               {"output_root": tmp_path, "max_megapixels": max_mp}, progress)
    return dict(zip(["slider", "gallery", "table", "downloads", "status", "pairs"], out)), progress


def test_no_upload(tmp_path):
    out, _ = restore_uploads([], tmp_path)
    assert out["status"].startswith("Upload at least") and out["slider"] is None


def test_non_image_and_huge_are_refused_before_decoding(tmp_path):
    from PIL import Image
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    big = tmp_path / "big.png"
    Image.new("RGB", (3000, 2000)).save(big)
    out, progress = restore_uploads([text, big], tmp_path, max_mp=5)
    assert out["status"].startswith("**Nothing restored (2 upload(s)).**")
    assert "notes.txt: not an image file" in out["status"]
    assert "big.png: image too large: 3000x2000 = 6 MP, the limit is 5 MP" in out["status"]
    assert out["downloads"] is None and out["pairs"] == []
    assert progress.calls[-1] == ((2, 2), "done")


def test_check_image_file_reads_only_the_header(tmp_path):
    from PIL import Image
    path = tmp_path / "ok.jpg"
    Image.new("RGB", (64, 48)).save(path)
    assert service.check_image_file(path) == (64, 48)


def test_split_array_layouts():
    rgb = np.zeros((4, 5, 3), np.uint8)
    assert service.split_array(rgb)[0] is rgb
    gray, alpha = service.split_array(np.zeros((4, 5), np.uint8))
    assert gray.shape == (4, 5, 3) and alpha is None
    rgb4, alpha = service.split_array(np.ones((4, 5, 4), np.float32))
    assert rgb4.dtype == np.uint8 and rgb4.max() == 255 and alpha.shape == (4, 5)
    from facerefine.errors import ImageInputError
    for bad in (np.zeros((4, 5, 2)), np.zeros((0, 5, 3)), "x", np.zeros((2, 2, 2, 2))):
        with pytest.raises(ImageInputError):
            service.split_array(bad)


def test_friendly_errors():
    from facerefine.errors import WeightsNotFoundError
    message = "weights file 'x.pth' not found"
    assert service.friendly_error(WeightsNotFoundError(message)) == message
    assert service.friendly_error(RuntimeError("CUDA out of memory. Tried")).startswith("out of memory")
    assert "unexpected error (ZeroDivisionError)" in service.friendly_error(ZeroDivisionError("boom"))


def test_missing_weights_is_a_message(tmp_path):
    from PIL import Image
    photo = tmp_path / "photo.png"
    Image.new("RGB", (96, 64), (90, 80, 70)).save(photo)
    out, _ = restore_uploads([photo], tmp_path, service.Settings(restorer="codeformer"))
    assert out["status"].startswith("**Nothing restored (1 upload(s)).**")
    assert "photo.png: weights file 'codeformer.pth' not found" in out["status"]
    assert "\n  " in out["status"]  # the folders searched stay inside the message's list item


def test_port_in_use_is_a_clear_error():
    import json
    import socket
    import subprocess
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "facerefine", "app", "--port", str(port), "--json"],
                             capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ok"] is False and f"cannot serve on 127.0.0.1:{port}" in result["error"]
