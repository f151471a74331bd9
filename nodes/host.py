"""ComfyUI host shim for the nodes: host modules (imported only inside ComfyUI), devices, interruption,
progress, out-of-memory back-off, a model cache and autograd inside a node. Outside ComfyUI (tests, CLI)
every helper falls back to plain torch behaviour, so node classes can be called directly.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from ..errors import FaceRefineError
from ..models.device import get_device as resolve_device_as_torch

log = logging.getLogger("facerefine")


# --- host modules, only if importable ---

def _comfy_module(name: str):
    """Import a ComfyUI module when running inside ComfyUI, else None."""
    if "comfy" not in sys.modules and "folder_paths" not in sys.modules:
        return None  # not inside ComfyUI: never import a same-named stranger
    try:
        return __import__(name, fromlist=["_"])
    except Exception:  # noqa: BLE001 - any import failure means "no host"
        return None


def model_management():
    return _comfy_module("comfy.model_management")


def comfy_utils():
    return _comfy_module("comfy.utils")


def folder_paths():
    return _comfy_module("folder_paths")


def in_comfy() -> bool:
    return model_management() is not None


# --- devices ---

def get_device(requested: str = "auto") -> torch.device:
    """models.device.resolve_device: 'auto' = ComfyUI's torch device (``get_torch_device``), or cuda/cpu
    outside ComfyUI; an absent GPU asked for by name is a clear error."""
    return resolve_device_as_torch(requested)


def offload_device() -> torch.device:
    mm = model_management()
    if mm is not None:
        return mm.unet_offload_device()
    return torch.device("cpu")


def soft_empty_cache() -> None:
    mm = model_management()
    if mm is not None:
        mm.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def on_device(model: Any, device: torch.device) -> Iterator[Any]:
    """Move a model (anything with ``.to``) to ``device`` for the block, then offload it."""
    movable = hasattr(model, "to")
    if movable:
        model.to(device)
    try:
        yield model
    finally:
        target = offload_device()
        if movable and torch.device(device) != target:
            model.to(target)
            soft_empty_cache()


# --- interruption ---

_local_interrupt = threading.Event()


class Interrupted(FaceRefineError):
    """Processing was interrupted (outside ComfyUI; inside, ComfyUI's own exception is raised)."""


def request_interrupt(value: bool = True) -> None:
    """Ask running work to stop (ComfyUI's interrupt flag inside ComfyUI)."""
    mm = model_management()
    if mm is not None:
        mm.interrupt_current_processing(value)
    elif value:
        _local_interrupt.set()
    else:
        _local_interrupt.clear()


def check_interrupted() -> None:
    """Raise if the user pressed Cancel (ComfyUI) or request_interrupt() was called."""
    mm = model_management()
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()
    elif _local_interrupt.is_set():
        _local_interrupt.clear()
        raise Interrupted("processing interrupted")


# --- progress ---

class Progress:
    """``comfy.utils.ProgressBar`` when inside ComfyUI, a counter otherwise.

    Every update also checks for interruption, so loops that report progress
    can be cancelled between faces and between steps.
    """

    def __init__(self, total: int, callback: Optional[Callable[[int, int], None]] = None):
        self.total = max(int(total), 1)
        self.done = 0
        self.callback = callback
        utils = comfy_utils()
        self._bar = utils.ProgressBar(self.total) if utils is not None else None

    def update(self, n: int = 1) -> None:
        self.done = min(self.done + n, self.total)
        if self._bar is not None:
            self._bar.update_absolute(self.done, self.total)
        if self.callback is not None:
            self.callback(self.done, self.total)
        check_interrupted()

    def absolute(self, done: int, total: Optional[int] = None) -> None:
        """Core-style ``progress(done, total)`` callback."""
        if total:
            self.total = max(int(total), 1)
        self.done = min(int(done), self.total)
        if self._bar is not None:
            self._bar.update_absolute(self.done, self.total)
        if self.callback is not None:
            self.callback(self.done, self.total)
        check_interrupted()


def should_stop() -> bool:
    """``should_stop()`` callback for core loops.

    Inside ComfyUI it raises ComfyUI's own interrupt exception (so the run ends as
    "interrupted", not as an error); outside it returns True once request_interrupt() was called.
    """
    mm = model_management()
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()
        return False
    if _local_interrupt.is_set():
        _local_interrupt.clear()
        return True
    return False


# --- out-of-memory back-off ---

def is_oom(err: BaseException) -> bool:
    mm = model_management()
    oom_type = getattr(mm, "OOM_EXCEPTION", None) if mm is not None else None
    if oom_type is not None and isinstance(err, oom_type):
        return True
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def map_batches(fn: Callable[[int, int], Any], total: int, batch_size: int,
                progress: Optional[Progress] = None) -> list:
    """Call ``fn(start, stop)`` over ``range(total)`` in chunks; on OOM halve the chunk and retry.

    Returns the list of chunk results in order. The pattern follows ComfyUI's
    ImageUpscaleWithModel tile halving. One face still out of memory gives a
    FaceRefineError that says what to do.
    """
    results: list = []
    size = max(1, int(batch_size))
    start = 0
    while start < total:
        stop = min(start + size, total)
        check_interrupted()
        try:
            results.append(fn(start, stop))
        except Exception as err:  # noqa: BLE001 - only OOM is handled, the rest re-raised
            if not is_oom(err):
                raise
            soft_empty_cache()
            if size == 1:
                raise FaceRefineError(
                    "out of memory even with one face at a time; use a smaller crop size, "
                    "fewer refine steps, or device=cpu") from err
            size = max(1, size // 2)
            log.warning("FaceRefine: out of memory, retrying with %d faces per batch", size)
            continue
        if progress is not None:
            progress.update(stop - start)
        start = stop
    return results


# --- model cache: keyed by file, mtime, size, device and options ---

class ModelCache:
    """Small LRU of loaded models so repeated runs don't reload weights."""

    def __init__(self, max_items: int = 6):
        self.max_items = max_items
        self._items: "OrderedDict[tuple, Any]" = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(path: Optional[os.PathLike | str], device: Any, *extra: Any) -> tuple:
        if path is None:
            file_key: tuple = (None,)
        else:
            p = Path(path)
            try:
                st = p.stat()
                file_key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
            except OSError:
                file_key = (str(p), None, None)
        return (*file_key, str(device), *extra)

    def get_or_load(self, path: Optional[os.PathLike | str], device: Any, loader: Callable[[], Any],
                    *extra: Any) -> Any:
        key = self.key(path, device, *extra)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        with torch.inference_mode(False):  # ComfyUI runs nodes in inference mode; keep params autograd-able
            model = loader()
        with self._lock:
            self._items[key] = model
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return model

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


MODEL_CACHE = ModelCache()


def cached_model(path: Optional[os.PathLike | str], device: Any, loader: Callable[[], Any], *extra: Any) -> Any:
    return MODEL_CACHE.get_or_load(path, device, loader, *extra)


@contextlib.contextmanager
def autograd() -> Iterator[None]:
    """Gradients inside a ComfyUI node (ComfyUI executes nodes under torch.inference_mode)."""
    with torch.inference_mode(False), torch.enable_grad():
        yield
