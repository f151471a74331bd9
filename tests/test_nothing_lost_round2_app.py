"""Issue 26, items 5 and 9: the app never deletes another session's upload, never shows a server path,
and stopped with SIGTERM (systemd, docker) it leaves nothing behind, as with Ctrl+C."""
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")


def _noise(path, seed=0, size=(64, 48)):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl+C"])
def test_stopped_app_leaves_no_photo_and_no_temp_folder(tmp_path, monkeypatch, stop):
    from gradio_client import Client, handle_file
    from test_app_browser import AppServer
    child_tmp, uploads = tmp_path / "tmp", tmp_path / "gradio"
    child_tmp.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    with monkeypatch.context() as m:  # the app's temp folders, and only the app's
        m.setenv("TMPDIR", str(child_tmp))
        m.setenv("GRADIO_TEMP_DIR", str(uploads))
        server = AppServer(home, None, tmp_path / "app.log")
    try:
        server.wait_ready()
        client = Client(server.url, download_files=False, verbose=False)
        result = client.predict([handle_file(str(_noise(tmp_path / "photo.png")))], None, "auto", "none", "auto",
                                1.0, 0.5, 0, 0.5, 1.0, "lab", "auto", False, api_name="/restore")
        assert "Restored 1 of 1" in result[4], result[4]
        assert list(child_tmp.glob("facerefine-app-*")) and _files(uploads)  # photos are there while it runs
        server.proc.send_signal(stop)
        assert server.proc.wait(60) == 0, (tmp_path / "app.log").read_text()[-3000:]
    finally:
        server.stop()
    assert not list(child_tmp.glob("facerefine-app-*")), (tmp_path / "app.log").read_text()[-3000:]
    assert not [p for p in _files(child_tmp) + _files(uploads) if p.suffix.lower() in (".png", ".jpg", ".zip")]
