"""Give the heap's free pages back to the system between chunks of work (glibc ``malloc_trim``).

Tensors of many sizes, freed after each chunk of faces or frames, fragment glibc's heap: without a trim, RSS
creeps with the number of chunks although nothing is kept (issue 26: 120 faces, docs/video.md: long clips).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import lru_cache


@lru_cache(maxsize=1)
def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def release_free_memory() -> None:
    """``malloc_trim(0)`` where glibc has it; a no-op elsewhere."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
