"""Issue 16, items 2 and 8: downloads that never corrupt, never hang for ever and never install a web page."""
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from facerefine.errors import DownloadError
from facerefine.models import download, registry

REPO = Path(__file__).resolve().parent.parent
SHARED_WEIGHTS = Path(os.environ.get("FACEREFINE_SHARED_WEIGHTS", REPO.parent / "shared" / "weights"))

PAYLOAD = b"PK\x03\x04" + os.urandom(1_200_000)  # starts like a torch zip archive
HTML = b"<!DOCTYPE html><html><head><title>Rate limit</title></head><body>" + b"x" * 4000 + b"</body></html>"


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[str] = []
        self.active = 0
        self.cond = threading.Condition()


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        srv: _Server = self.server
        with srv.cond:
            srv.requests.append(self.path)
            srv.active += 1
            srv.cond.notify_all()
        try:
            if self.path.startswith("/slow-forever"):
                self.send_response(200)
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                for i in range(0, len(PAYLOAD), 1000):  # each read succeeds, the whole never ends in time
                    self.wfile.write(PAYLOAD[i:i + 1000])
                    self.wfile.flush()
                    time.sleep(0.05)
                return
            if self.path.startswith("/html"):
                body, ctype = HTML, self.path.endswith("-typed") and "text/html; charset=utf-8" or "application/octet-stream"
            else:
                body, ctype = PAYLOAD, "application/octet-stream"
            if self.path.startswith("/together"):
                # wait (a little) for a second downloader so that two concurrent downloads overlap
                with srv.cond:
                    srv.cond.wait_for(lambda: srv.active >= 2, timeout=4.0)
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for i in range(0, len(body), 64 * 1024):  # slowly, so two writers interleave
                self.wfile.write(body[i:i + 64 * 1024])
                self.wfile.flush()
                time.sleep(0.03)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with srv.cond:
                srv.active -= 1


@pytest.fixture
def server(monkeypatch):
    monkeypatch.delenv("FACEREFINE_OFFLINE", raising=False)
    httpd = _Server()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


_CHILD = """
import json, sys
from pathlib import Path
from facerefine.models import download
try:
    out = download.download_file(sys.argv[1], Path(sys.argv[2]), sha256=sys.argv[3], progress=False)
    print(json.dumps({"ok": True, "path": str(out)}))
except Exception as err:
    print(json.dumps({"ok": False, "error": f"{type(err).__name__}: {err}"}))
"""


def test_two_processes_downloading_one_file_both_get_it_intact(server, tmp_path):
    httpd, base = server
    dest = tmp_path / "weights" / "shared.pth"
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    env = {k: v for k, v in os.environ.items() if k != "FACEREFINE_OFFLINE"}
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, base + "/together/shared.pth", str(dest), digest],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              cwd=REPO.parent) for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["ok"] for r in results), results
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in dest.parent.iterdir()) == ["shared.pth"]  # no temp or lock file left
    assert 1 <= len(httpd.requests) <= 2


def test_unique_temporary_name_in_the_target_folder(server, tmp_path, monkeypatch):
    _, base = server
    dest = tmp_path / "w.pth"
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((Path(src), Path(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(download.os, "replace", spy)
    download.download_file(base + "/file", dest, sha256=hashlib.sha256(PAYLOAD).hexdigest(), progress=False)
    (src, dst), = seen
    assert dst == dest and src.parent == dest.parent
    assert src.name != "w.pth.part" and src.name.startswith("w.pth.") and src.name.endswith(".part")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pth"]


def test_overall_deadline_stops_a_trickling_download(server, tmp_path):
    _, base = server
    dest = tmp_path / "w.pth"
    start = time.monotonic()
    with pytest.raises(DownloadError, match="deadline"):
        download.download_file(base + "/slow-forever", dest, progress=False, timeout=5, deadline=1.0)
    assert time.monotonic() - start < 10
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path", ["/html", "/html-typed"])
def test_entry_without_sha256_refuses_an_html_page(server, tmp_path, monkeypatch, path):
    _, base = server
    spec = registry.WeightSpec("test-nohash", "nohash.pth", "facerefine", (base + path,), None, None,
                               "MIT", "none", "test")
    monkeypatch.setitem(registry.REGISTRY, spec.name, spec)
    with pytest.raises(DownloadError, match="web page"):
        download.download_spec(spec, progress=False)
    target = Path(os.environ["FACEREFINE_HOME"]) / "facerefine"
    assert not target.exists() or list(target.iterdir()) == []


def test_entry_without_sha256_checks_size_and_format(server, tmp_path):
    _, base = server
    with pytest.raises(DownloadError, match="registry says"):
        download.download_file(base + "/file", tmp_path / "a.pth", size=len(PAYLOAD) + 1, progress=False)
    with pytest.raises(DownloadError, match="safetensors"):
        download.download_file(base + "/file", tmp_path / "a.safetensors", progress=False)
    assert list(tmp_path.iterdir()) == []
    out = download.download_file(base + "/file", tmp_path / "a.pth", size=len(PAYLOAD), progress=False)
    assert out.read_bytes() == PAYLOAD


def test_facexlib_entries_carry_the_public_sha256():
    assert registry.get_spec("retinaface-mobilenet").sha256 == \
        "2979b33ffafda5d74b6948cd7a5b9a7a62f62b949cef24e95fd15d2883a65220"
    assert registry.get_spec("retinaface-mobilenet").size == 1_789_735
    assert registry.get_spec("bisenet").sha256 == "468e13ca13a9b43cc0881a9f99083a430e9c0a38abd935431d1c28ee94b26567"
    assert registry.get_spec("arcface").sha256 == "a035c768259b98ab1ce0e646312f48b9e1e218197a0f80ac6765e88f8b6ddf28"


def test_shipped_mobilenet_file_matches_its_registry_hash():
    f = SHARED_WEIGHTS / "detection_mobilenet0.25_Final.pth"
    if not f.is_file():
        pytest.skip("../shared/weights/detection_mobilenet0.25_Final.pth not present")
    spec = registry.get_spec("retinaface-mobilenet")
    assert f.stat().st_size == spec.size and download.sha256_of(f) == spec.sha256
