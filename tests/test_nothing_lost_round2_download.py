"""Issue 26, item 10: a download stops as soon as the bytes received pass the registry's size or the
server's Content-Length, instead of filling the disk until the deadline."""
import http.server
import threading

import pytest

from facerefine.errors import DownloadError
from facerefine.models import download

EXPECTED = 4096                   # what the registry says
SAFETY_BOUND = 64 << 20           # the endless server gives up here (so a broken client cannot fill the disk)
BLOCK = b"PK\x03\x04" + b"\0" * (64 * 1024 - 4)


class _Endless(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.sent = 0
        self.cut_off = threading.Event()   # the client closed the connection before the safety bound
        self.done = threading.Event()


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        srv: _Endless = self.server
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if self.path == "/declared-huge":
            self.send_header("Content-Length", str(1 << 40))
        self.end_headers()
        try:
            while srv.sent < SAFETY_BOUND:  # "without end" (no length, or a false one)
                self.wfile.write(BLOCK)
                srv.sent += len(BLOCK)
        except (BrokenPipeError, ConnectionResetError):
            srv.cut_off.set()
        finally:
            srv.done.set()


@pytest.fixture
def endless(monkeypatch):
    monkeypatch.delenv("FACEREFINE_OFFLINE", raising=False)  # only this local 127.0.0.1 server is reached
    srv = _Endless()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("path", ["/no-length", "/declared-huge"])
def test_download_stops_past_the_registry_size(tmp_path, endless, path):
    srv, base = endless
    dest = tmp_path / "weights" / "model.pth"
    with pytest.raises(DownloadError) as err:
        download.download_file(base + path, dest, size=EXPECTED, progress=False, deadline=600)
    assert str(EXPECTED) in str(err.value)
    assert srv.done.wait(60)
    assert srv.cut_off.is_set(), f"the client read on: the server sent {srv.sent} bytes"
    assert list(dest.parent.iterdir()) == []  # nothing left behind

