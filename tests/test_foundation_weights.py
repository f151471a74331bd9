"""Weights registry, lookup order, safe loading and downloads (issue: foundation)."""
import hashlib
import http.server
import os
import pickle
import socket
import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest
import torch

from facerefine.errors import DownloadError, WeightsFormatError, WeightsNotFoundError, WrongArchitectureError
from facerefine.models import download, locate, loading, registry

REPO = Path(__file__).resolve().parent.parent


# ---------- safe loading ----------

class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"params_ema": {"w": torch.zeros(1)}, "payload": _RunsCode(marker)}, f)
    # The same payload in torch's zip format must also be refused.
    evil_zip = tmp_path / "evil_zip.pth"
    torch.save({"w": torch.zeros(1), "payload": _RunsCode(marker)}, evil_zip)
    for path in (evil, evil_zip):
        with pytest.raises(WeightsFormatError, match="refused|not a readable"):
            loading.load_state_dict(path)
    assert not marker.exists(), "pickled code ran"


def test_truncated_safetensors_and_random_bytes(tmp_path):
    good = tmp_path / "good.safetensors"
    loading.save_safetensors({"a": torch.randn(64, 64)}, good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsFormatError, match="not a valid safetensors"):
        loading.load_state_dict(truncated)
    for name in ("random.safetensors", "random.pth", "random.ckpt"):
        junk = tmp_path / name
        junk.write_bytes(os.urandom(4096))
        with pytest.raises(WeightsFormatError):
            loading.load_state_dict(junk)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(WeightsFormatError, match="empty"):
        loading.load_state_dict(empty)


def test_basicsr_wrappers_are_unwrapped(tmp_path):
    sd = {"conv.weight": torch.randn(2, 2)}
    for wrapper in ("params_ema", "params", "state_dict"):
        path = tmp_path / f"{wrapper}.pth"
        torch.save({wrapper: sd, "iter": 5}, path)
        out = loading.load_state_dict(path)
        assert set(out) == {"conv.weight"} and torch.equal(out["conv.weight"], sd["conv.weight"])


def test_wrong_architecture_lists_keys():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    wrong = {"encoder.weight": torch.zeros(1)}
    with pytest.raises(WrongArchitectureError) as err:
        loading.load_into(model, wrong, "TinyConv", "x.safetensors")
    msg = str(err.value)
    assert "TinyConv" in msg and "0.weight" in msg and "encoder.weight" in msg
    bad_shape = {k: torch.zeros(1) for k in model.state_dict()}
    with pytest.raises(WrongArchitectureError, match="shapes"):
        loading.load_into(model, bad_shape, "TinyConv")


# ---------- lookup order and offline errors ----------

def test_lookup_order(tmp_path, monkeypatch):
    spec = registry.get_spec("codeformer")
    comfy_dir, a1111_root, home = tmp_path / "comfy", tmp_path / "a1111", tmp_path / "home"
    for d in (comfy_dir, a1111_root / "facerestore_models", home / spec.folder):
        d.mkdir(parents=True)
        (d / spec.file).write_bytes(b"x")
    monkeypatch.setenv("FACEREFINE_HOME", str(home))
    fp = types.ModuleType("folder_paths")
    fp.get_folder_paths = lambda kind: [str(comfy_dir)] if kind == spec.folder else []
    paths = types.ModuleType("modules.paths")
    paths.models_path = str(a1111_root)
    explicit = tmp_path / "mine.pth"
    explicit.write_bytes(b"x")
    assert locate.resolve(explicit) == explicit
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    monkeypatch.setitem(sys.modules, "modules.paths", paths)
    assert locate.resolve("codeformer").parent == comfy_dir
    monkeypatch.delitem(sys.modules, "folder_paths")
    assert locate.resolve("codeformer").parent == a1111_root / "facerestore_models"
    monkeypatch.delitem(sys.modules, "modules.paths")
    assert locate.resolve("codeformer").parent == home / spec.folder


def test_offline_missing_file_names_folder_and_url_without_network(monkeypatch):
    opened = []

    def no_socket(*a, **k):
        opened.append(a)
        raise AssertionError("network used while offline")

    monkeypatch.setattr(socket, "socket", no_socket)
    monkeypatch.setattr(socket, "create_connection", no_socket)
    monkeypatch.setenv("FACEREFINE_OFFLINE", "1")
    spec = registry.get_spec("codeformer")
    with pytest.raises(WeightsNotFoundError) as err:
        locate.resolve("codeformer")
    msg = str(err.value)
    assert spec.file in msg and spec.urls[0] in msg and str(locate.home_dir() / spec.folder) in msg
    with pytest.raises(DownloadError):
        download.download_file(spec.urls[0], locate.home_dir() / "x.pth")
    assert not opened


# ---------- downloads from a local server ----------

class _Handler(http.server.BaseHTTPRequestHandler):
    payload = os.urandom(300_000)

    def log_message(self, *a):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        if self.path.startswith("/cut"):
            self.wfile.write(self.payload[: len(self.payload) // 3])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(self.payload)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.delenv("FACEREFINE_OFFLINE", raising=False)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_wrong_hash_leaves_nothing(server, tmp_path):
    dest = tmp_path / "w.pth"
    with pytest.raises(DownloadError, match="sha256"):
        download.download_file(server + "/file", dest, sha256="0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_download_interrupted_leaves_no_final_file(server, tmp_path):
    dest = tmp_path / "w.pth"
    with pytest.raises(DownloadError):
        download.download_file(server + "/cut", dest, progress=False)
    assert not dest.exists() and list(tmp_path.iterdir()) == []


def test_download_correct_hash_lands_atomically(server, tmp_path, monkeypatch):
    dest = tmp_path / "w.pth"
    digest = hashlib.sha256(_Handler.payload).hexdigest()
    renames = []
    real_replace = os.replace

    def spy(src, dst):
        renames.append((Path(src).name, Path(dst).name, dest.exists()))
        return real_replace(src, dst)

    monkeypatch.setattr(download.os, "replace", spy)
    out = download.download_file(server + "/file", dest, sha256=digest, progress=False)
    assert out == dest and dest.read_bytes() == _Handler.payload
    (src, dst, existed), = renames  # written to a unique .part next to it, then one rename
    assert src.startswith("w.pth.") and src.endswith(".part") and dst == "w.pth" and not existed
    assert list(tmp_path.iterdir()) == [dest]


def test_registry_download_through_spec(server, tmp_path, monkeypatch):
    spec = registry.WeightSpec("test-local", "local.bin", "facerefine", (server + "/file",),
                               hashlib.sha256(_Handler.payload).hexdigest(), len(_Handler.payload),
                               "MIT", "none", "test")
    monkeypatch.setitem(registry.REGISTRY, spec.name, spec)
    path = locate.resolve("test-local")
    assert path.read_bytes() == _Handler.payload and path.parent == locate.home_dir() / "facerefine"


# ---------- CLI and import hygiene ----------

def _cli(*args, env=None):
    e = {**os.environ, "FACEREFINE_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "facerefine", *args], capture_output=True, text=True,
                          env=e, cwd=REPO.parent)


def test_models_list_json_parses():
    import json
    out = _cli("models", "list", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout.strip().splitlines()[-1])
    names = {m["name"] for m in data["models"]}
    assert {"codeformer", "gfpgan-1.4", "arcface"} <= names
    for m in data["models"]:
        for key in ("name", "file", "folder", "urls", "sha256", "size", "license", "architecture"):
            assert key in m


def test_models_verify_and_unknown_name():
    import json
    out = _cli("models", "verify", "codeformer", "--json")
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["results"][0]["status"] == "missing"
    bad = _cli("models", "download", "no-such-model", "--json")
    assert bad.returncode != 0 and "unknown model" in json.loads(bad.stdout.strip().splitlines()[-1])["error"]


def test_root_import_is_light():
    code = ("import sys, facerefine; heavy = [m for m in ('torch', 'comfy', 'modules', 'gradio', 'cv2') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
