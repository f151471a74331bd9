"""The pack in a real AUTOMATIC1111 webui v1.10.1 (../shared/a1111), installed and started as a user does.

One module-scoped run, in steps that each test below checks:
1. unpack the webui (prepare.sh), make its venv with the project's torch + torchvision, and let its launcher
   install the webui's own requirements (``launch.py --exit``); snapshot ``pip freeze --all``;
2. copy this checkout into ``extensions/facerefine`` and start the webui (full UI + API): its launcher runs
   our install.py; then the checks: it serves, the freeze differs only by added packages, FaceRefine is a
   face restorer, our API route restores a face with a reference photo, and the Extras tab (in headless
   Chromium, the webui's own postprocessing code path) changes the face and nothing outside it;
3. stop it and start it a second time: it serves and the freeze does not change at all.

Slow (a few minutes: the webui's requirements install from the registry). Skips when ../shared/a1111 or the
registry is missing, unless FACEREFINE_REQUIRE_A1111=1 (CI), which makes that a failure. The Extras
screenshots go to $FACEREFINE_ARTIFACTS (default: the test's tmp folder): a1111_extras.png (the section, no
photo: refresh docs/img/a1111_extras.png from it) and a1111_extras_result.png (with the London face: never
commit it).
"""
from __future__ import annotations

import base64
import importlib.metadata
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO.parent / "shared" / "a1111"
LONDON = REPO.parent / "shared" / "data" / "london"
REQUIRED = os.environ.get("FACEREFINE_REQUIRE_A1111") == "1"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage"]
LAUNCH_ARGS = ["--skip-torch-cuda-test", "--use-cpu", "all", "--no-half", "--api", "--no-download-sd-model"]

pytestmark = [pytest.mark.slow, pytest.mark.webui]


def unavailable(reason: str):
    if REQUIRED:
        pytest.fail(f"the real-webui test could not run: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, cwd, env, timeout, log: Path):
    with open(log, "a") as out:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0:
        unavailable(f"`{' '.join(map(str, cmd))}` failed ({proc.returncode}):\n{log.read_text()[-3000:]}")


def freeze(python: Path) -> dict[str, str]:
    out = subprocess.run([str(python), "-m", "pip", "freeze", "--all", "--disable-pip-version-check"],
                         capture_output=True, text=True, check=True).stdout
    lines = [line for line in out.splitlines() if line and not line.startswith("#")]
    return dict(line.split("==", 1) if "==" in line else (line, line) for line in lines)


def changed(before: dict, after: dict) -> list[str]:
    return [f"{name} {version} -> {after.get(name, 'removed')}" for name, version in sorted(before.items())
            if after.get(name) != version]


class Webui:
    """The webui's launch.py in its own process group, on a free 127.0.0.1 port."""

    def __init__(self, root: Path, env: dict, log: Path):
        self.root, self.env, self.log, self.port = root, env, log, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([str(root / "venv/bin/python"), "launch.py", *LAUNCH_ARGS,
                                      "--port", str(self.port)], cwd=root, env=env, stdout=open(log, "w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_serving(self, timeout: float = 900) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the webui exited ({self.proc.returncode}):\n{self.log.read_text()[-4000:]}")
            try:
                self.get("/sdapi/v1/face-restorers", timeout=5)
                return
            except Exception:
                time.sleep(2)
        raise AssertionError(f"the webui did not serve within {timeout} s:\n{self.log.read_text()[-4000:]}")

    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as answer:
            return json.loads(answer.read())

    def post(self, path: str, payload: dict, timeout: float = 900):
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)


def copy_checkout(dest: Path) -> None:
    """This checkout as a user's copy of it: tracked and untracked-but-not-ignored files (no .venv)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def b64_png(array: np.ndarray) -> str:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def degraded_london_face():
    """A London face (neutral) degraded x4 + JPEG 40, its bounding box, and the same person smiling."""
    from PIL import Image
    photos = sorted((LONDON / "neutral").glob("*.jpg"))
    if not photos:
        unavailable(f"no London faces in {LONDON}")
    clean = Image.open(photos[0]).convert("RGB")
    w, h = clean.size
    small = clean.resize((w // 4, h // 4), Image.BICUBIC).resize((w, h), Image.BICUBIC)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=40)
    lq = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    reference = np.asarray(Image.open(sorted((LONDON / "smiling").glob(photos[0].name[:3] + "_*.jpg"))[0])
                           .convert("RGB"))
    points = json.loads(photos[0].with_suffix(".landmarks.json").read_text())
    pupils = np.array(points["points"][:2] if isinstance(points, dict) else points[:2], dtype=float)
    return lq, reference, pupils


def foreign_tracebacks(log: str) -> list[str]:
    """The exception lines of tracebacks in a webui log other than its own "no checkpoint" ones."""
    found = []
    for chunk in log.split("Traceback (most recent call last):")[1:]:
        lines = [line for line in chunk.splitlines() if line.strip()]
        ends = [line for line in lines if not line[0].isspace()]
        last = ends[0] if ends else ""
        if "No checkpoints found" not in last and "FileNotFoundError" not in last:
            found.append(last)
    return found


def assert_only_the_face_changed(before: np.ndarray, after: np.ndarray, pupils: np.ndarray) -> None:
    assert after.shape == before.shape
    moved = np.abs(after.astype(int) - before.astype(int)).max(axis=2) > 2
    assert moved.mean() > 0.01, "the face did not change"
    eye_distance = float(np.linalg.norm(pupils[1] - pupils[0]))
    centre = pupils.mean(axis=0)
    ys, xs = np.nonzero(moved)
    # every changed pixel lies within the face's reach (a few eye distances around the eyes)
    reach = np.hypot(xs - centre[0], ys - centre[1]).max() / eye_distance
    assert reach < 3.5, f"pixels {reach:.1f} eye distances from the face changed"


@pytest.fixture(scope="module")
def webui(tmp_path_factory):
    if not (FIXTURE / "prepare.sh").is_file():
        unavailable(f"no webui fixture at {FIXTURE}")
    dest = tmp_path_factory.mktemp("a1111")
    log = dest / "setup.log"
    run(["bash", str(FIXTURE / "prepare.sh"), str(dest)], dest, os.environ.copy(), 300, log)
    exports = subprocess.run(["bash", str(FIXTURE / "prepare.sh"), "--env", str(dest)], capture_output=True,
                             text=True, check=True).stdout
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON", "FACEREFINE_"))}
    env.update(line[len("export "):].split("=", 1) for line in exports.splitlines() if line.startswith("export "))
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    root = dest / "webui"
    run([sys.base_prefix + "/bin/python3", "-m", "venv", "venv"], root, env, 300, log)
    python = root / "venv/bin/python"
    torch_stack = [f"{name}=={importlib.metadata.version(name)}" for name in ("torch", "torchvision")]
    run([str(python), "-m", "pip", "install", "-q", *torch_stack], root, env, 1800, log)
    run([str(python), "launch.py", *LAUNCH_ARGS, "--exit"], root, env, 1800, log)  # the webui's own pins
    state = {"root": root, "env": env, "python": python, "snapshot": freeze(python), "dest": dest}
    copy_checkout(root / "extensions" / "facerefine")
    server = Webui(root, env, dest / "first-launch.log")
    try:
        server.wait_serving()
        state.update(first=server, after_first=freeze(python))
        yield state
    finally:
        server.stop()


def test_first_launch_serves_and_adds_packages_only(webui):
    server = webui["first"]
    assert changed(webui["snapshot"], webui["after_first"]) == [], server.log.read_text()[-4000:]
    added = sorted(set(webui["after_first"]) - set(webui["snapshot"]))
    print(f"packages added by install.py: {added or 'none'}")
    log = server.log.read_text()
    assert "[FaceRefine]" in log  # our installer ran, as the webui's launcher does for every extension
    assert "Error loading script" not in log, log[-4000:]
    assert "FaceRefine" in [r["name"] for r in server.get("/sdapi/v1/face-restorers")]


def test_api_route_restores_the_face_with_a_reference_photo(webui):
    server = webui["first"]
    lq, reference, pupils = degraded_london_face()
    status, answer = server.post("/facerefine/v1/restore", {
        "image": b64_png(lq), "reference": b64_png(reference), "quality": 1.0, "fidelity": 0.5,
        "visibility": 1.0, "refine_steps": 0, "identity_strength": 0.5})
    assert status == 200 and answer["ok"], answer.get("messages")
    assert answer["faces"] == 1 and answer["info"]["FaceRefine faces"] == 1
    from PIL import Image
    restored = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["image"]))).convert("RGB"))
    assert_only_the_face_changed(lq, restored, pupils)
    status, answer = server.post("/facerefine/v1/restore", {"image": b64_png(lq), "restorer": "/etc/passwd"})
    assert status == 400 and "not offered" in answer["messages"][0]


def test_extras_tab_restores_only_the_face(webui, tmp_path):
    """The webui's own code path: Extras tab, FaceRefine section on, a reference photo, Generate."""
    if not Path(CHROMIUM).exists():
        unavailable("Debian chromium is not installed")
    from PIL import Image
    from playwright.sync_api import sync_playwright
    server = webui["first"]
    lq, reference, pupils = degraded_london_face()
    Image.fromarray(lq).save(tmp_path / "input.png")
    Image.fromarray(reference).save(tmp_path / "reference.png")
    shots = Path(os.environ.get("FACEREFINE_ARTIFACTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            page.goto(server.url + "/", timeout=300_000)
            page.get_by_role("button", name="Extras", exact=True).click()
            page.locator("#extras_facerefine-visible-checkbox").check()
            page.locator("#extras_facerefine .label-wrap").click()  # open the section to show its controls
            page.locator("#extras_facerefine_reference").scroll_into_view_if_needed()
            # docs/img/a1111_extras.png: the section before any photo is loaded (no faces of ../shared/data)
            page.screenshot(path=str(shots / "a1111_extras.png"), full_page=True)
            page.locator("#extras_image input[type=file]").set_input_files(str(tmp_path / "input.png"))
            page.locator("#extras_facerefine_reference input[type=file]").set_input_files(
                str(tmp_path / "reference.png"))
            page.locator("#extras_generate").click()
            page.locator("#extras_gallery img").first.wait_for(timeout=600_000)
            info_box = page.locator("[id^=html_info]", has_text="FaceRefine").first  # html_info_x_extras
            info_box.wait_for(timeout=60_000)
            info = info_box.inner_text()
            src = page.locator("#extras_gallery img").first.get_attribute("src")
            page.screenshot(path=str(shots / "a1111_extras_result.png"), full_page=True)
        finally:
            browser.close()
    assert "FaceRefine faces: 1" in info, info
    with urllib.request.urlopen(src, timeout=60) as answer:
        restored = np.asarray(Image.open(io.BytesIO(answer.read())).convert("RGB"))
    assert_only_the_face_changed(lq, restored, pupils)
    # the only tracebacks (page loads, the run) are the webui's own "no checkpoint" ones
    assert foreign_tracebacks(server.log.read_text()) == [], server.log.read_text()[-6000:]


def test_second_launch_serves_and_changes_nothing(webui):
    webui["first"].stop()
    server = Webui(webui["root"], webui["env"], webui["dest"] / "second-launch.log")
    try:
        server.wait_serving()
        assert "FaceRefine" in [r["name"] for r in server.get("/sdapi/v1/face-restorers")]
    finally:
        server.stop()
    assert changed(webui["after_first"], freeze(webui["python"])) == []
    assert freeze(webui["python"]) == webui["after_first"]
    log = server.log.read_text()
    assert "pip could not add it" not in log  # a skipped optional package is not retried at every start
