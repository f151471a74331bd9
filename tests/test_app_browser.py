"""The gradio app in a real headless Chromium (Debian `chromium`, driven by Playwright).

Starts `python -m facerefine app` on a free 127.0.0.1 port with a tiny random restorer, uploads
photos through the page and reads what the page shows. Screenshots go to $FACEREFINE_ARTIFACTS
(default: the test's tmp folder).

Run by hand to refresh the README screenshot (public-domain astronaut, never ../shared/data):
    python tests/test_app_browser.py --screenshot docs/img/app.png [--restorer NAME]
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
CHROMIUM = os.environ.get("FACEREFINE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage"]
RUN_TIMEOUT_MS = 300_000

pytestmark = pytest.mark.browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """`python -m facerefine app` in a subprocess, stopped by its own pid."""

    def __init__(self, home: Path, restorer: str | None, log: Path, extra: tuple[str, ...] = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = dict(os.environ, FACEREFINE_HOME=str(home), FACEREFINE_OFFLINE="1", HF_HUB_OFFLINE="1",
                   GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "facerefine", "app", "--port", str(self.port), *extra]
        if restorer:
            cmd += ["--restorer", restorer]
        self.log = log
        self.proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, cwd=home)

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"app not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            return False
        with urllib.request.urlopen(self.url, timeout=10) as r:
            return r.status == 200

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def listening_addresses(pid: int, port: int) -> list[str]:
    """Local addresses this port is bound to (from /proc/net/tcp*)."""
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if int(p, 16) == port and state == "0A":  # LISTEN
                found.append(addr)
    return found


class Page:
    """The few things the tests do with the app page."""

    def __init__(self, page, url: str):
        self.page = page
        page.goto(url, wait_until="domcontentloaded")
        page.wait_for_selector("#fr-run", timeout=120_000)

    def upload(self, *files: Path) -> None:
        self.page.locator("#fr-upload input[type=file]").set_input_files([str(f) for f in files])
        for f in files:  # gradio lists each file with a download link once its upload finished
            self.page.locator(f"#fr-upload tr:has(td.filename[aria-label='{f.name}']) a[download]").wait_for(
                timeout=120_000)

    def reload(self) -> None:
        self.page.reload(wait_until="domcontentloaded")
        self.page.wait_for_selector("#fr-run", timeout=120_000)

    def listed(self, elem_id: str) -> list[str]:
        """File names listed by a gr.File component."""
        return self.page.eval_on_selector_all(f"#{elem_id} td.filename", "els => els.map(e => e.ariaLabel)")

    def run(self) -> str:
        before = self.status()
        self.page.click("#fr-run")
        self.page.wait_for_function(
            """prev => { const s = document.querySelector('#fr-status [data-testid=markdown]');
                         const t = s ? s.innerText.trim() : '';
                         const busy = document.querySelector('#fr-status [data-testid=status-tracker]:not(.hide)');
                         if (busy) return false;
                         return t && t !== prev && /Restored|Nothing restored|Upload at least/.test(t); }""",
            arg=before, timeout=RUN_TIMEOUT_MS)
        return self.status()

    def status(self) -> str:
        """The status text only (not the progress overlay drawn over it while running)."""
        box = self.page.locator("#fr-status [data-testid=markdown]")
        return box.inner_text().strip() if box.count() else ""

    def slider_images(self) -> list[int]:
        """naturalWidth of each image shown in the before/after slider."""
        return self.page.eval_on_selector_all("#fr-slider img", "els => els.map(e => e.complete ? e.naturalWidth : 0)")

    def table_rows(self) -> list[list[str]]:
        return self.page.eval_on_selector_all(  # gradio 6 draws the data rows as a virtual grid of divs
            "#fr-scores .virtual-body [role=row]",
            "rows => rows.map(r => Array.from(r.querySelectorAll('[role=gridcell]')).map(c => c.innerText.trim()))")

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.wait_for_timeout(1500)  # let gradio's fade-in of fresh outputs finish (looks only)
        self.page.screenshot(path=str(path), full_page=True)
        return path


def make_tiny_restorer(home: Path) -> str:
    import tiny_models
    folder = home / "facerestore_models"
    folder.mkdir(parents=True, exist_ok=True)
    return tiny_models.make_tiny_gfpgan(folder / "tiny_gfpgan.safetensors").name


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (driver only; "
                                                                  "the browser is Debian's chromium)")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed (apt-get install -y chromium chromium-driver)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("app_home")
    restorer = make_tiny_restorer(home)
    srv = AppServer(home, restorer, home / "app.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    yield Page(context.new_page(), server.url)
    context.close()


@pytest.fixture
def artifacts(tmp_path):
    folder = Path(os.environ.get("FACEREFINE_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_binds_localhost_only(server):
    addrs = listening_addresses(server.proc.pid, server.port)
    assert addrs, "no listening socket found"
    assert all(a in ("0100007F", "00000000000000000000000001000000") for a in addrs), addrs


def test_london_face_restored_in_browser(page, server, london_dir, artifacts):
    face = sorted((london_dir / "neutral").glob("*.jpg"))[0]
    page.upload(face)
    status = page.run()
    shot = page.screenshot(artifacts / "app_london.png")
    assert status.startswith("Restored 1 of 1 image(s), 1 face(s)"), status
    widths = page.slider_images()
    assert len(widths) == 2 and all(w > 0 for w in widths), widths
    rows = page.table_rows()
    assert len(rows) == 1 and rows[0][0] == face.name, rows
    before, after = float(rows[0][5]), float(rows[0][6])
    assert 0.0 <= before <= 1.0 and 0.0 <= after <= 1.0
    assert page.listed("fr-download") == [face.stem + "_restored.png"]
    assert shot.stat().st_size > 10_000
    assert server.alive()


def test_many_uploads_gallery_and_zip(page, server, london_dir, artifacts):
    faces = [sorted((london_dir / kind).glob("*.jpg"))[0] for kind in ("neutral", "smiling")]
    page.upload(*faces)
    status = page.run()
    assert status.startswith("Restored 2 of 2 image(s), 2 face(s)"), status
    assert [r[0] for r in page.table_rows()] == [f.name for f in faces]
    assert page.listed("fr-download") == ["facerefine_results.zip"] + [f.stem + "_restored.png" for f in faces]
    thumbs = page.page.locator("#fr-gallery button img")
    thumbs.nth(1).wait_for(timeout=30_000)
    assert thumbs.count() == 2
    first = page.page.get_attribute("#fr-slider img >> nth=1", "src")
    thumbs.nth(1).click()
    page.page.wait_for_function(
        "prev => { const i = document.querySelectorAll('#fr-slider img')[1]; return i && i.src !== prev; }",
        arg=first, timeout=30_000)
    page.screenshot(artifacts / "app_many.png")
    assert server.alive()


def _no_face_image(path: Path) -> Path:
    from PIL import Image
    y, x = np.mgrid[0:384, 0:512]
    Image.fromarray(np.dstack([x / 2, y / 1.5, (x + y) / 4]).astype(np.uint8)).save(path)
    return path


def _huge_image(path: Path) -> Path:
    from PIL import Image
    Image.new("RGB", (10000, 6000), (120, 110, 100)).save(path, compress_level=1)  # 60 MP, limit is 50
    return path


def test_bad_uploads_give_messages_and_server_survives(page, server, tmp_path, artifacts):
    text = tmp_path / "notes.txt"
    text.write_text("this is not a picture\n" * 100)
    fake_png = tmp_path / "broken.png"
    fake_png.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(2000))

    page.upload(text, fake_png)
    status = page.run()
    assert status.startswith("Nothing restored (2 upload(s))"), status
    assert "notes.txt: not an image file" in status and "broken.png" in status
    assert server.alive()

    page.reload()
    page.upload(_no_face_image(tmp_path / "no_face.png"))
    status = page.run()
    assert status.startswith("Restored 1 of 1 image(s), 0 face(s)"), status
    assert "no face" in status.lower()
    assert server.alive()

    page.reload()
    page.upload(_huge_image(tmp_path / "huge.png"))
    status = page.run()
    page.screenshot(artifacts / "app_bad_input.png")
    assert status.startswith("Nothing restored"), status
    assert "huge.png: image too large: 10000x6000" in status
    assert server.alive()


def test_run_without_upload_asks_for_one(page, server):
    assert page.run() == "Upload at least one photo first."
    assert server.alive()


# ---------------------------------------------------------------- README screenshot

def take_readme_screenshot(target: Path, restorer: str | None) -> Path:
    """The app restoring scikit-image's public-domain astronaut portrait."""
    import tempfile
    from PIL import Image
    from playwright.sync_api import sync_playwright
    from skimage.data import astronaut
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photo = tmp / "astronaut.png"
        Image.fromarray(astronaut()).save(photo)
        home = Path(os.environ.get("FACEREFINE_HOME") or tmp / "home")
        srv = AppServer(home if home.exists() else tmp, restorer, tmp / "app.log")
        try:
            srv.wait_ready()
            with sync_playwright() as p:
                b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = Page(b.new_context(viewport={"width": 1400, "height": 1130}).new_page(), srv.url)
                page.upload(photo)
                print(page.run())
                page.screenshot(target)
                b.close()
        finally:
            srv.stop()
    return target


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--screenshot", type=Path, required=True)
    parser.add_argument("--restorer", default=None)
    args = parser.parse_args()
    print(take_readme_screenshot(args.screenshot, args.restorer))
