"""Where weights files live: the folders searched for each kind, in lookup order.

ComfyUI folder_paths -> A1111 models dir -> $FACEREFINE_HOME -> files embedded in this package.
Host modules are only consulted when the host has already imported them; this module never imports a host.
models/locate.py (names -> paths, downloads) and models/download.py both build on it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

from ..errors import WeightsNotFoundError

PACKAGE_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")

# A1111 keeps some restorers in folders named after the model family.
_A1111_ALIASES = {"facerestore_models": ("facerestore_models", "Codeformer", "GFPGAN", "RestoreFormer"),
                  "facedetection": ("facedetection", "Codeformer/facelib", "GFPGAN"),
                  "pyiqa": ("pyiqa",),
                  "facerefine": ("facerefine",)}


def offline() -> bool:
    return os.environ.get("FACEREFINE_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def home_dir() -> Path:
    return Path(os.environ.get("FACEREFINE_HOME") or Path.home() / ".cache" / "facerefine").expanduser()


def search_folders(folder: str) -> list[Path]:
    """All folders searched for a folder kind, in lookup order."""
    found: list[Path] = []
    folder_paths = sys.modules.get("folder_paths")  # ComfyUI, only if running inside it
    if folder_paths is not None:
        try:
            found += [Path(p) for p in folder_paths.get_folder_paths(folder)]
        except Exception:  # kind not registered yet
            pass
    a1111_paths = sys.modules.get("modules.paths")
    if a1111_paths is not None and getattr(a1111_paths, "models_path", None):
        found += [Path(a1111_paths.models_path) / sub for sub in _A1111_ALIASES.get(folder, (folder,))]
    found.append(home_dir() / folder)
    found.append(PACKAGE_WEIGHTS)
    unique: list[Path] = []
    for p in found:
        if p not in unique:
            unique.append(p)
    return unique


def download_target(folder: str) -> Path:
    """Where a download of this folder kind is written (first writable search folder)."""
    for p in search_folders(folder):
        if p == PACKAGE_WEIGHTS:
            continue
        try:
            p.mkdir(parents=True, exist_ok=True)
            if os.access(p, os.W_OK):
                return p
        except OSError:
            continue
    raise WeightsNotFoundError(f"no writable folder for '{folder}' weights; set FACEREFINE_HOME")


def find_existing(file: str, folder: str) -> Optional[Path]:
    for d in search_folders(folder):
        candidate = d / file
        if candidate.is_file():
            return candidate
    return None


def list_files(folder: str) -> list[str]:
    """Weights files present in every search folder of a kind (for dropdowns)."""
    names: list[str] = []
    for d in search_folders(folder):
        if d.is_dir():
            for f in sorted(d.iterdir()):
                if f.suffix.lower() in WEIGHT_SUFFIXES and f.name not in names and not f.name.endswith(".part"):
                    names.append(f.name)
    return names
