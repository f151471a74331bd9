"""ComfyUI runtime helpers shared by every FaceRefine node module.

Progress, interruption, devices, OOM back-off, a model cache and model-folder
registration. ``comfy``/``folder_paths`` are imported lazily; when they are not
importable (tests, CLI) every helper falls back to plain torch behaviour, so node
classes can be called directly.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

from ..errors import FaceRefineError

log = logging.getLogger("facerefine")

# --- shared node conventions (category, tooltips) ---
CATEGORY = "FaceRefine"
CATEGORY_STEPS = "FaceRefine/steps"
CATEGORY_LOADERS = "FaceRefine/loaders"
CATEGORY_UTILS = "FaceRefine/utils"

# Model folders we register with ComfyUI: facerestore_models is shared with
# facerestore_cf and ReActor; the others hold our own weights.
MODEL_FOLDERS = ("facerestore_models", "facerefine", "facedetection", "pyiqa")
WEIGHT_EXTENSIONS = {".safetensors", ".pth", ".pt", ".ckpt", ".bin"}
DEVICE_CHOICES = ["auto", "cpu"]  # auto = ComfyUI's device (GPU when present)

TOOLTIPS = {
    "image": "Images to process (ComfyUI IMAGE, batch allowed).",
    "face_crops": "Aligned faces from FaceRefine Face Crop (FACE_CROPS).",
    "face_latent": "Codebook latent from FaceRefine Codebook Lookup (FACE_LATENT).",
    "restorer": "A restorer from FaceRefine Load Restorer (CodeFormer, GFPGAN, RestoreFormer++ or ours).",
    "quality": "Target quality, 0..1: higher steers the codebook lookup toward higher predicted quality.",
    "fidelity": "0 = most restoration, 1 = closest to the input face (CodeFormer's w).",
    "device": "auto = ComfyUI's device (GPU when present); cpu forces the CPU.",
    "face_batch": "Faces processed at once. Halved automatically on out-of-memory.",
    "seed": "Random seed of the diffusion refinement.",
}


def tooltip(name: str, extra: Optional[str] = None) -> str:
    return extra or TOOLTIPS.get(name, "")


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
    """ComfyUI's torch device (``get_torch_device``), or cuda/cpu outside ComfyUI."""
    if requested and requested not in ("auto", "default"):
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise FaceRefineError(f"device '{requested}' requested but CUDA is not available; use 'cpu' or 'auto'")
        return torch.device(requested)
    mm = model_management()
    if mm is not None:
        return mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


# --- model folders (dropdowns) ---

def register_model_folders() -> None:
    """Register our model folders with ComfyUI's folder_paths (no-op outside ComfyUI)."""
    fp = folder_paths()
    if fp is None:
        return
    for name in MODEL_FOLDERS:
        default = os.path.join(fp.models_dir, name)
        fp.add_model_folder_path(name, default)
        paths, exts = fp.folder_names_and_paths[name]
        if not exts:  # registered by a yaml or by us: restrict to weights files
            fp.folder_names_and_paths[name] = (paths, set(WEIGHT_EXTENSIONS))
        elif isinstance(exts, set):
            exts.update(WEIGHT_EXTENSIONS)


def list_weights(folder: str) -> list[str]:
    """Weights files for a dropdown: ComfyUI's folder listing plus models.locate's search folders
    ($FACEREFINE_HOME, A1111). Files embedded in the package show only under their own kind."""
    from ..models.locate import PACKAGE_WEIGHTS, WEIGHT_SUFFIXES, search_folders
    from ..models.registry import REGISTRY
    fp = folder_paths()
    names: list[str] = []
    if fp is not None:
        try:
            names = list(fp.get_filename_list(folder))
        except Exception:  # noqa: BLE001 - folder kind not registered
            names = []
    kind = {s.file: s.folder for s in REGISTRY.values()}
    for d in search_folders(folder):
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if f.suffix.lower() not in WEIGHT_SUFFIXES or f.name in names:
                continue
            if d == PACKAGE_WEIGHTS and kind.get(f.name) != folder:
                continue
            names.append(f.name)
    return names


def list_weights_for(folder: str, architecture: str) -> list[str]:
    """list_weights without registry files of another architecture (e.g. no metric in a prior dropdown)."""
    from ..models.registry import REGISTRY
    arch = {s.file: s.architecture for s in REGISTRY.values()}
    return [n for n in list_weights(folder) if arch.get(Path(n).name, architecture) == architecture]


def weights_choices(folder: str, extra: Sequence[str] = ()) -> list[str]:
    """Dropdown entries: ``extra`` first, files present, then known registry files not present yet.

    Known-but-absent entries download on first use, or (offline) fail with an error that
    names the file, the folders searched and the URL.
    """
    from ..models.registry import specs_for_folder
    names = list(extra)
    for name in list_weights(folder) + [s.file for s in specs_for_folder(folder) if not s.embedded]:
        if name not in names:
            names.append(name)
    return names


def embedded_restorers() -> list[str]:
    """Restorers shipped inside the package (weights/), e.g. the compact IQPFR default."""
    from ..models.locate import PACKAGE_WEIGHTS
    from ..models.registry import REGISTRY
    return [s.file for s in REGISTRY.values()
            if s.embedded and s.needed_by.startswith("lookup") and (PACKAGE_WEIGHTS / s.file).is_file()]


def restorer_choices(extra: Sequence[str] = ()) -> list[str]:
    """Restorer dropdown: models/facerestore_models files, the embedded default, known downloads."""
    register_model_folders()
    return weights_choices("facerestore_models", extra=list(extra) + embedded_restorers())


def default_restorer() -> str:
    """Embedded default if shipped, else the first file present, else CodeFormer (downloads on first use)."""
    present = embedded_restorers() + list_weights("facerestore_models")
    return present[0] if present else "codeformer.pth"


def weights_path(name: str, folder: str) -> Path:
    """Full path of a dropdown entry (or registry name / path); errors name file and folders."""
    fp = folder_paths()
    if fp is not None:
        try:
            hit = fp.get_full_path(folder, name)
        except Exception:  # noqa: BLE001
            hit = None
        if hit:
            return Path(hit)
    from ..models.locate import resolve
    return resolve(name, folder)


# --- UI payloads for web/facerefine.js ---

def quality_ui(face_crops_before: Any, face_crops_after: Any = None) -> dict:
    """``{"facerefine_quality": [{"face", "before", "after"}, ...]}`` for web/facerefine.js.

    before: the latest score on the input faces; after: the score on the output faces,
    same metric when available. Entries are {"metric", "raw", "normalized"} or None.
    """
    before_faces = tuple(getattr(face_crops_before, "faces", ()) or ())
    after_faces = tuple(getattr(face_crops_after, "faces", ()) or ()) if face_crops_after is not None else ()
    lines = []
    for i in range(max(len(before_faces), len(after_faces))):
        b = _latest(before_faces[i]) if i < len(before_faces) else None
        a = _latest(after_faces[i], b.metric if b is not None else None) if i < len(after_faces) else None
        if a is not None and b is not None and a is b:  # unchanged score carried through: no "after"
            a = None
        lines.append({"face": i, "before": _score_dict(b), "after": _score_dict(a)})
    return {"facerefine_quality": lines}


def score_before_after(before: Any, after: Any, iqa: Any = None) -> tuple[Any, dict]:
    """Score a step's input and output faces with one metric (``iqa`` or the default face metric).

    Returns (output faces carrying the new score, quality_ui payload). Input faces already
    scored with that metric are not scored again. A metric that cannot load (missing weights)
    only drops the read-out, with a warning: it never fails the restoration step.
    """
    try:
        from ..core.score import get_metric, score_face_crops
        metric = iqa if iqa is not None else get_metric("auto", get_device("auto"))
        if before is not None and not before.is_empty and any(
                q is None for q in before.latest_quality(metric.name)):
            before = score_face_crops(before, metric)
        after = score_face_crops(after, metric)
    except FaceRefineError as err:
        log.warning("FaceRefine: no quality read-out: %s", err)
    return after, quality_ui(before, after)


def _latest(face: Any, metric: Optional[str] = None) -> Any:
    scores = tuple(getattr(face, "quality", ()) or ())
    same = [q for q in scores if metric is None or getattr(q, "metric", None) == metric]
    pool = same or list(scores)
    return pool[-1] if pool else None


def _score_dict(q: Any) -> Optional[dict]:
    if q is None:
        return None
    return {"metric": str(getattr(q, "metric", "")), "raw": _float(getattr(q, "raw", None)),
            "normalized": _float(getattr(q, "normalized", None))}


def _float(v: Any) -> Optional[float]:
    try:
        return None if v is None else round(float(v), 4)
    except (TypeError, ValueError):
        return None


def save_previews(images: torch.Tensor, prefix: str = "facerefine") -> list[dict]:
    """Save IMAGE [B,H,W,C] as PNGs in ComfyUI's temp folder; entries for /view. [] outside ComfyUI."""
    fp = folder_paths()
    if fp is None or images is None or images.ndim != 4 or images.shape[0] == 0:
        return []
    import numpy as np
    from PIL import Image
    temp_dir = fp.get_temp_directory()
    os.makedirs(temp_dir, exist_ok=True)
    entries = []
    import uuid
    token = uuid.uuid4().hex[:10]
    for i, img in enumerate(images.detach().float().cpu().clamp(0, 1)):
        arr = (img.numpy() * 255.0 + 0.5).astype(np.uint8)
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
        name = f"{prefix}_{token}_{i:03d}.png"
        Image.fromarray(arr).save(os.path.join(temp_dir, name), compress_level=1)
        entries.append({"filename": name, "subfolder": "", "type": "temp"})
    return entries


def compare_ui(before: torch.Tensor, after: torch.Tensor, limit: int = 1) -> dict:
    """``{"facerefine_compare": [{"before": ..., "after": ...}]}`` for the drag-to-compare widget
    (the first ``limit`` images of the batch)."""
    b = save_previews(before[:limit], "facerefine_before")
    a = save_previews(after[:limit], "facerefine_after")
    return {"facerefine_compare": [{"before": x, "after": y} for x, y in zip(b, a)]}


def node_output(result: Sequence[Any], ui: Optional[dict] = None) -> Any:
    """A node return value: the plain tuple, or {"ui": ..., "result": ...} when there is UI data."""
    result = tuple(result)
    if ui:
        return {"ui": ui, "result": result}
    return result
