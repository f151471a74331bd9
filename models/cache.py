"""The one cache of loaded models, for every loader: (kind, name or path, device, extra) -> model.

    model = cached("restorer", (str(path), str(device)), lambda: build(path, device))

A run (and a host keeping the pack loaded) loads each file once per device. ``clear()`` forgets everything
(``clear("detector")`` one kind); hosts call it to free memory.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Hashable, Optional, TypeVar

T = TypeVar("T")

_models: dict[tuple[str, Hashable], Any] = {}
_lock = threading.RLock()


def cached(kind: str, key: Hashable, load: Callable[[], T]) -> T:
    """The model stored under (kind, key), loaded by ``load()`` the first time (one load at a time)."""
    with _lock:
        if (kind, key) not in _models:
            _models[(kind, key)] = load()
        return _models[(kind, key)]


def clear(kind: Optional[str] = None) -> None:
    """Forget the cached models of one kind, or all."""
    with _lock:
        for k in [k for k in _models if kind is None or k[0] == kind]:
            del _models[k]


def cached_kinds() -> dict[str, int]:
    """{kind: number of models cached} (tests, diagnostics)."""
    with _lock:
        counts: dict[str, int] = {}
        for kind, _ in _models:
            counts[kind] = counts.get(kind, 0) + 1
        return counts


__all__ = ["cached", "cached_kinds", "clear"]
