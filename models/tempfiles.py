"""Unique temporary names for atomic writes (no torch import: downloads and image writers use it)."""
from __future__ import annotations

import os
import uuid
from pathlib import Path


def name_max(folder: str | os.PathLike) -> int:
    """The longest file name (bytes) the file system of ``folder`` takes (255 when it does not say)."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):  # a folder not created yet, Windows
        return 255


def unique_temp_path(path: str | os.PathLike) -> Path:
    """A fresh name ``<name>.<pid>-<random>.part`` next to ``path`` (same filesystem, so os.replace is
    atomic), unique per writer: two writers of one target never share a temporary file. ``<name>`` is
    shortened when needed, so the temporary name fits wherever ``path``'s name fits. The caller
    creates it (so it gets the normal permissions the final file should have) and removes it on failure."""
    path = Path(path)
    tag, name, limit = f".{os.getpid()}-{uuid.uuid4().hex[:12]}.part", path.name, name_max(path.parent)
    while name and len(os.fsencode(name + tag)) > limit:
        name = name[:-1]
    return path.with_name(name + tag)
