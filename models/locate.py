"""The one weights locator: a name, file name or path -> the file on disk (downloading registry files when
allowed), and what ``auto`` restorer means.

Order: explicit path -> ComfyUI folder_paths -> A1111 models dir -> $FACEREFINE_HOME
-> files embedded in this package (models/folders.py). Every front end (CLI, nodes, app, A1111) resolves
weights here; this module never imports a host.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from ..errors import WeightsNotFoundError
from .folders import (PACKAGE_WEIGHTS, WEIGHT_SUFFIXES, download_target, find_existing, home_dir,  # noqa: F401
                      list_files, offline, search_folders)
from .registry import REGISTRY, WeightSpec, get_spec

def resolve(name_or_path: str | os.PathLike, folder: str = "facerestore_models", *,
            download: bool = True) -> Path:
    """Path of a weights file given a path, a registry name or a file name.

    Downloads registry files when allowed (not FACEREFINE_OFFLINE); otherwise the
    error names the file, the folders searched and the URL.
    """
    raw = str(name_or_path)
    explicit = Path(raw).expanduser()
    if explicit.is_file():
        return explicit
    spec: Optional[WeightSpec] = get_spec(raw)
    if spec is None:  # a file name that belongs to a registry entry?
        spec = next((s for s in _all_specs() if s.file == raw), None)
    file = spec.file if spec else Path(raw).name
    folder = spec.folder if spec else folder
    hit = find_existing(file, folder)
    if hit is not None:
        return hit
    why = " (FACEREFINE_OFFLINE=1, so nothing was downloaded)" if offline() else ""
    if spec is not None and spec.urls and download and not offline():
        from ..errors import DownloadError
        from .download import download_spec
        try:
            return download_spec(spec)
        except DownloadError as err:
            why = f" and its download failed ({str(err).splitlines()[-1].strip()})"
    searched = "\n  ".join(str(p) for p in search_folders(folder))
    url = spec.urls[0] if spec and spec.urls else "(no public URL: train it with `python -m facerefine train` or pass a path)"
    raise WeightsNotFoundError(
        f"weights file '{file}' not found{why}.\n Searched folders ({folder}):\n  {searched}\n"
        f" Download it from {url}\n and put it in one of those folders (or pass its path).")


def _all_specs():
    return REGISTRY.values()


AUTO = "auto"


def default_restorer() -> str:
    """What ``auto`` restorer means in every front end: the first of ``registry.restorer_candidates()``
    (community restorers on disk: CodeFormer, GFPGAN 1.4, GFPGAN 1.3, RestoreFormer++, also under A1111's
    file names; else the embedded compact model)."""
    from .registry import restorer_candidates
    return restorer_candidates()[0]
