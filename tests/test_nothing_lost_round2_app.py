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
        from facerefine.core import controls
        given = {"restorer": "none", "metric": "auto"}
        values = [given.get(c.name, c.default) for c in controls.shown_in("app")]  # the table's order
        result = client.predict([handle_file(str(_noise(tmp_path / "photo.png")))], *values, api_name="/restore")
        assert "Restored 1 of 1" in result[4], result[4]
        assert list(child_tmp.glob("facerefine-app-*")) and _files(uploads)  # photos are there while it runs
        server.proc.send_signal(stop)
        assert server.proc.wait(60) == 0, (tmp_path / "app.log").read_text()[-3000:]
    finally:
        server.stop()
    assert not list(child_tmp.glob("facerefine-app-*")), (tmp_path / "app.log").read_text()[-3000:]
    assert not [p for p in _files(child_tmp) + _files(uploads) if p.suffix.lower() in (".png", ".jpg", ".zip")]


# ---------------------------------------------------------------- item 5: sessions share gradio's upload paths

def _restored(status: str) -> bool:
    return "Restored 1 of 1" in status


@pytest.mark.browser
def test_one_tab_never_deletes_the_upload_another_tab_is_about_to_run(tmp_path, monkeypatch):
    """Gradio stores identical uploads at one content-hashed path: two tabs upload the same photo, the
    first one's run must not delete the file the second one runs next."""
    from test_app_browser import CHROMIUM, CHROMIUM_ARGS, AppServer, Page
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed")
    home, uploads = tmp_path / "home", tmp_path / "gradio"
    home.mkdir()
    photo = _noise(tmp_path / "photo.png")
    with monkeypatch.context() as m:
        m.setenv("GRADIO_TEMP_DIR", str(uploads))
        server = AppServer(home, None, tmp_path / "app.log")
    try:
        server.wait_ready()
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            first, second = (Page(browser.new_context().new_page(), server.url) for _ in range(2))
            first.upload(photo)
            second.upload(photo)
            status_first, status_second = first.run(), second.run()
            browser.close()
        assert _restored(status_first), status_first
        assert _restored(status_second), status_second
        assert str(uploads) not in status_second and "/tmp" not in status_second
        assert not [p for p in _files(uploads) if p.name == "photo.png"]  # deleted once nobody needs it
    finally:
        server.stop()


def test_a_missing_upload_is_reported_without_the_server_path(tmp_path, monkeypatch):
    from facerefine.ui import gradio_app, service
    uploads = tmp_path / "gradio_uploads"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(uploads))
    gone = uploads / "0123abcd" / "photo.png"
    out_root = tmp_path / "out"
    out_root.mkdir()
    result = gradio_app._restore_uploads_or_raise([str(gone)], service.Settings(restorer="none", metric=None),
                                                  {"output_root": out_root, "max_megapixels": None},
                                                  lambda *a, **k: None)
    status = result[4]
    assert "Nothing restored" in status and "photo.png" in status
    assert str(uploads) not in status and "0123abcd" not in status and str(tmp_path) not in status
