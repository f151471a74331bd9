"""Safe downloads.

Pattern (as huggingface_hub does it): a file lock per target (``filelock``) so two processes never
download the same file at once, a unique temporary name in the target folder (``<file>.<random>.part``),
checks (sha256; without one: size, file format, no HTML error page), then one atomic ``os.replace``.
A per-read timeout and an overall deadline bound the time, and the expected size (the registry's, else
Content-Length) bounds the bytes read; on any failure nothing is left behind.
"""
from __future__ import annotations

import hashlib
import os
import time
import urllib.request
from pathlib import Path
from typing import Optional

from ..errors import DownloadError
from .folders import download_target, offline
from .registry import WeightSpec
from .tempfiles import unique_temp_path

_CHUNK = 1 << 20
DEFAULT_DEADLINE_S = 3600.0   # whole download, waiting for another process's lock included
MIN_UNVERIFIED_BYTES = 1024   # a weights file without a sha256 must be at least this big


def download_deadline() -> float:
    """Overall deadline in seconds (``FACEREFINE_DOWNLOAD_DEADLINE`` overrides the default)."""
    raw = os.environ.get("FACEREFINE_DOWNLOAD_DEADLINE", "").strip()
    try:
        value = float(raw) if raw else DEFAULT_DEADLINE_S
    except ValueError:
        value = DEFAULT_DEADLINE_S
    return value if value > 0 else DEFAULT_DEADLINE_S


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _lock_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.lock")


def download_file(url: str, dest: Path, sha256: Optional[str] = None, size: Optional[int] = None,
                  progress: bool = True, timeout: float = 30.0, deadline: Optional[float] = None) -> Path:
    """Download ``url`` to ``dest``. On any failure no file is left at ``dest`` and no temporary file stays.

    ``timeout``: seconds per network read; ``deadline``: seconds for the whole call (default
    :func:`download_deadline`). Two processes asking for the same ``dest`` take turns: the second one
    finds the finished file and returns it.
    """
    if offline():
        raise DownloadError(f"FACEREFINE_OFFLINE=1: not downloading {url} to {dest}")
    from filelock import FileLock, Timeout
    dest = Path(dest)
    limit = download_deadline() if deadline is None else float(deadline)
    end = time.monotonic() + limit
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"cannot create the folder {dest.parent} for {dest.name}: {err}") from err
    lock_file = _lock_path(dest)
    lock = FileLock(str(lock_file))
    try:
        lock.acquire(timeout=max(limit, 0.01))
    except Timeout as err:
        raise DownloadError(f"download of {dest.name} gave up after {limit:g} s waiting for another process "
                            f"downloading it (lock {lock_file})") from err
    except OSError as err:
        raise DownloadError(f"cannot lock {lock_file} for the download of {dest.name}: {err}") from err
    try:
        if dest.is_file() and _already_good(dest, sha256, size):
            return dest  # another process finished it while we waited
        return _fetch(url, dest, sha256, size, progress, timeout, end, limit)
    finally:
        lock.release()
        # With unique temporary names the lock only saves double work, so removing its file is safe
        # (a process that raced past it still writes a complete, checked file).
        try:
            lock_file.unlink()
        except OSError:
            pass


def _already_good(dest: Path, sha256: Optional[str], size: Optional[int]) -> bool:
    try:
        if size is not None and dest.stat().st_size != size:
            return False
        if sha256:
            return sha256_of(dest).lower() == sha256.lower()
        check_format(dest, dest.name)
        return True
    except (OSError, DownloadError):
        return False


def _fetch(url: str, dest: Path, sha256: Optional[str], size: Optional[int], progress: bool,
           timeout: float, end: float, limit: float) -> Path:
    digest = hashlib.sha256()
    received = 0
    part = unique_temp_path(dest)
    try:
        out_file = open(part, "xb")  # exclusive: never another writer's file
    except OSError as err:
        raise DownloadError(f"cannot write in {dest.parent} for {dest.name}: {err}") from err
    try:
        with out_file as out:
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise DownloadError(f"download of {url} passed its deadline of {limit:g} s")
            with urllib.request.urlopen(url, timeout=min(timeout, remaining)) as resp:
                ctype = (resp.headers.get("Content-Type") or "").lower()
                if not sha256 and ("text/html" in ctype or "application/xhtml" in ctype):
                    raise DownloadError(f"{url} answered with a web page ({ctype}), not a weights file")
                total = int(resp.headers.get("Content-Length") or 0) or size or None
                if size is not None and total != size:
                    raise DownloadError(f"{url} announces {total} bytes; the registry says {size}")
                bar = _progress_bar(total, dest.name) if progress else None
                reader = getattr(resp, "read1", None) or resp.read
                try:
                    while True:
                        if time.monotonic() > end:
                            raise DownloadError(f"download of {url} passed its deadline of {limit:g} s "
                                                f"({received} bytes received); set FACEREFINE_DOWNLOAD_DEADLINE "
                                                f"for a slow connection")
                        block = reader(_CHUNK)  # read1: returns what arrived, so the deadline is checked often
                        if not block:
                            break
                        received += len(block)
                        if total is not None and received > total:  # a server that streams without end
                            raise DownloadError(f"download of {url} stopped: more than the expected {total} "
                                                f"bytes received")
                        out.write(block)
                        digest.update(block)
                        if bar is not None:
                            bar.update(len(block))
                finally:
                    if bar is not None:
                        bar.close()
        if total is not None and received != total:
            raise DownloadError(f"download of {url} interrupted: got {received} of {total} bytes")
        if size is not None and received != size:
            raise DownloadError(f"download of {url} has {received} bytes; the registry says {size}")
        if sha256:
            if digest.hexdigest().lower() != sha256.lower():
                raise DownloadError(f"sha256 mismatch for {url}: expected {sha256}, got {digest.hexdigest()}")
        else:
            check_format(part, dest.name)
        os.replace(part, dest)  # atomic on one filesystem (the temporary file lives next to dest)
        return dest
    except DownloadError:
        part.unlink(missing_ok=True)
        raise
    except Exception as err:  # network errors, disk full, interrupted reads
        part.unlink(missing_ok=True)
        raise DownloadError(f"download of {url} failed: {err}") from err
    except BaseException:  # KeyboardInterrupt: still leave nothing behind
        part.unlink(missing_ok=True)
        raise


def check_format(path: Path, file_name: str) -> None:
    """For files without a sha256: refuse HTML/text pages, tiny bodies and bodies that are not the
    format the file name says (.safetensors, .pth/.pt/.ckpt, .mat, .tflite). Raises DownloadError."""
    path = Path(path)
    length = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(64)
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body", b"{\"error", b"<h1")):
        raise DownloadError(f"{file_name}: the server sent a web page or error text instead of the file "
                            f"(starts with {head[:24]!r})")
    if length < MIN_UNVERIFIED_BYTES:
        raise DownloadError(f"{file_name}: only {length} bytes; too small to be a weights file"
                            + (f" (starts with {head[:24]!r})" if length else ""))
    suffix = Path(file_name).suffix.lower()
    if suffix == ".safetensors":
        n = int.from_bytes(head[:8], "little")
        if not (2 <= n <= length - 8 and head[8:9] == b"{"):
            raise DownloadError(f"{file_name}: not a safetensors file (bad header)")
    elif suffix in (".pth", ".pt", ".ckpt", ".bin"):
        # torch.save zip archives start with PK; legacy torch pickles with the pickle protocol mark
        if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
            raise DownloadError(f"{file_name}: not a PyTorch weights file (neither a zip archive nor a pickle)")
    elif suffix == ".mat":
        if not head.startswith(b"MATLAB"):
            raise DownloadError(f"{file_name}: not a MATLAB .mat file")
    elif suffix == ".tflite":
        if head[4:8] != b"TFL3":
            raise DownloadError(f"{file_name}: not a TFLite model")


def download_spec(spec: WeightSpec, progress: bool = True) -> Path:
    dest = download_target(spec.folder) / spec.file
    errors = []
    end = time.monotonic() + download_deadline()
    for url in spec.urls:
        left = end - time.monotonic()
        if left <= 0:
            errors.append(f"{url}: skipped, the overall deadline of {download_deadline():g} s passed")
            continue
        try:
            return download_file(url, dest, spec.sha256, spec.size, progress=progress, deadline=left)
        except DownloadError as err:
            errors.append(str(err))
    raise DownloadError(f"could not download {spec.file}:\n  " + "\n  ".join(errors or ["no URL"]))


def _progress_bar(total, desc):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False)
