"""Unique temporary names for atomic writes (no torch import: downloads and image writers use it)."""
from __future__ import annotations

import os
import uuid
from pathlib import Path


def unique_temp_path(path: str | os.PathLike) -> Path:
    """A fresh name ``<name>.<pid>-<random>.part`` next to ``path`` (same filesystem, so os.replace is
    atomic), unique per writer: two writers of one target never share a temporary file. The caller
    creates it (so it gets the normal permissions the final file should have) and removes it on failure."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.part")
