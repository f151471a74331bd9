"""Safe downloads: stream to ``<file>.part``, check sha256, then atomic rename."""
from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path
from typing import Optional

from ..errors import DownloadError
from .locate import download_target, offline
from .registry import WeightSpec

_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def download_file(url: str, dest: Path, sha256: Optional[str] = None, size: Optional[int] = None,
                  progress: bool = True, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest``. On any failure no file is left at ``dest``."""
    if offline():
        raise DownloadError(f"FACEREFINE_OFFLINE=1: not downloading {url} to {dest}")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or size or None
            bar = _progress_bar(total, dest.name) if progress else None
            while True:
                block = resp.read(_CHUNK)
                if not block:
                    break
                out.write(block)
                digest.update(block)
                received += len(block)
                if bar is not None:
                    bar.update(len(block))
            if bar is not None:
                bar.close()
        if total is not None and received != total:
            raise DownloadError(f"download of {url} interrupted: got {received} of {total} bytes")
        if sha256 and digest.hexdigest().lower() != sha256.lower():
            raise DownloadError(f"sha256 mismatch for {url}: expected {sha256}, got {digest.hexdigest()}")
        os.replace(part, dest)  # atomic on one filesystem
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


def download_spec(spec: WeightSpec, progress: bool = True) -> Path:
    dest = download_target(spec.folder) / spec.file
    errors = []
    for url in spec.urls:
        try:
            return download_file(url, dest, spec.sha256, spec.size, progress=progress)
        except DownloadError as err:
            errors.append(str(err))
    raise DownloadError(f"could not download {spec.file}:\n  " + "\n  ".join(errors or ["no URL"]))


def _progress_bar(total, desc):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False)
