"""What the A1111/Forge glue and the gradio app share: settings -> core pipeline -> result + messages.

Imports no host module and no gradio. Nothing here raises on bad input: every failure becomes a
message in ``Outcome.messages`` (the host shows it) and the input image is kept.
"""
from __future__ import annotations

import dataclasses
import sys
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Optional

import numpy as np

from ..core import controls
from ..errors import FaceRefineError, ImageInputError

DEFAULT_RESTORER = controls.BY_NAME["restorer"].default
DEFAULT_MAX_MEGAPIXELS: Optional[float] = None  # None: core.image_io.max_pixels() (FACEREFINE_MAX_PIXELS, 50 MP)

_lock = threading.Lock()  # one restoration at a time per process (models are shared)
_STEPS: dict = {}  # {"key": settings that built them, "steps": pipeline steps holding loaded models}


class Settings(SimpleNamespace):
    """User choices, the same in every front end: one attribute per control of core/controls.py, the table's
    default unless given (the table is read when Settings are made: a new row is a new setting)."""

    def __init__(self, **values: Any) -> None:
        unknown = sorted(set(values) - set(controls.BY_NAME))
        if unknown:
            raise TypeError(f"unknown setting(s) {unknown} (core/controls.py lists {sorted(controls.BY_NAME)})")
        super().__init__(**{**{c.name: c.default for c in controls.CONTROLS}, **values})

    def replace(self, **values: Any) -> "Settings":
        return Settings(**{**vars(self), **values})


def given(value: Any) -> bool:
    """Whether a front end gave a value: None, '' and an empty image keep the default."""
    return value is not None and not (isinstance(value, str) and not value) and getattr(value, "size", 1) != 0


def settings_from_values(values: dict, defaults: Optional[Settings] = None, strict: bool = False) -> Settings:
    """``defaults`` (the table's) with the values a front end gave, each checked against its row (type, range,
    choices). A value that fails the check keeps the default, or with ``strict`` raises RequestError."""
    checked = {}
    for name, value in values.items():
        if not given(value):
            continue
        try:
            checked[name] = controls.BY_NAME[name].check(value)
        except (TypeError, ValueError) as err:
            if strict:
                raise RequestError(str(err)) from None
    return (defaults or Settings()).replace(**checked)


def settings_from_webui(option: Callable[[str, Any], Any], **overrides: Any) -> Settings:
    """Settings from the webui's Settings -> FaceRefine (``option(key, default)``): the restorer and device, and one
    option per control offered there (facerefine_<name>); then the ``overrides`` a webui front end gave."""
    from ..models.device import resolve_device
    values = {c.name: option(f"facerefine_{c.name}", c.default) for c in controls.shown_in("webui")}
    values.update(restorer=option("facerefine_model", DEFAULT_RESTORER),
                  device=resolve_device(option("facerefine_device", "auto")))  # auto: the webui's device
    return settings_from_values(overrides, Settings(**values))


@dataclass
class Outcome:
    """One restored image (RGB uint8) or the reason it could not be restored."""

    image: Optional[np.ndarray] = None
    alpha: Optional[np.ndarray] = None
    rows: list[dict] = field(default_factory=list)     # one per face: scores before/after
    messages: list[str] = field(default_factory=list)
    ok: bool = False
    faces: int = 0
    info: dict = field(default_factory=dict)           # short key/values for the webui's infotext
    tensor: Any = None                                 # restored float32 [H,W,3] (full precision)
    source: Any = None                                 # core.image_io.LoadedImage of restore_file

    @property
    def pil_image(self):
        from PIL import Image
        if self.image is None:
            return None
        if self.alpha is not None:
            return Image.fromarray(np.dstack([self.image, self.alpha]), "RGBA")
        return Image.fromarray(self.image, "RGB")


# ---------------------------------------------------------------- choices for dropdowns

def restorer_choices() -> list[str]:
    names = [DEFAULT_RESTORER, "none"]
    try:
        from ..models.registry import REGISTRY
        names += [s.name for s in REGISTRY.values() if s.folder in ("facerestore_models", "facerefine")
                  and "lookup" in s.needed_by]
        names += restorer_files()
    except Exception as err:  # a broken registry must not break the UI
        _log(f"could not list restorers: {err}")
    return list(dict.fromkeys(names))


def restorer_files() -> list[str]:
    """Weights files in the restorer folders, minus the detector/parser/identity files that the webui keeps
    in the same folders (models/GFPGAN holds facexlib's detection_*.pth and parsing_*.pth)."""
    from ..models.locate import list_files
    from ..models.registry import REGISTRY
    other = {s.file for s in REGISTRY.values() if s.folder not in ("facerestore_models",)}
    return [f for f in list_files("facerestore_models") if f not in other
            and not f.startswith(("detection_", "parsing_", "recognition_"))]


def refuse_restorer(name, allowed_extra=()) -> Optional[str]:
    """Why a restorer choice from a client is refused, or None when it is one of the offered names.

    The app offers registry names and files found in the model folders (restorer_choices); anything
    else (a path, a relative name, a file elsewhere) is refused without touching the file system."""
    name = str(name or DEFAULT_RESTORER)
    if name in [e for e in allowed_extra if e] or name in restorer_choices():
        return None
    shown = name if len(name) <= 80 else name[:77] + "..."
    return (f"restorer {shown!r} is not offered here: choose one from the list (registry names and the "
            f"files in the model folders)")


def default_restorer() -> str:
    """What 'auto' means (models.locate.default_restorer: community weights on disk, else the embedded model)."""
    from ..models.locate import default_restorer as core_default
    return core_default()


def metric_choices() -> list[str]:
    from ..core.score import AUTO, METRICS
    return list(dict.fromkeys([AUTO, *METRICS]))


# ---------------------------------------------------------------- running

def restore_array(image: np.ndarray, settings: Settings, progress: Optional[Callable] = None) -> Outcome:
    """Restore the faces of an RGB (or gray / RGBA) uint8 array. Never raises."""
    import torch
    try:
        from ..core.image_io import check_pixel_limit
        if isinstance(image, np.ndarray) and image.ndim in (2, 3):
            check_pixel_limit(image.shape[1], image.shape[0], name="")  # before any float copy
        rgb, alpha = split_array(image)
    except Exception as err:  # odd dtypes, object arrays, ...
        return Outcome(messages=[friendly_error(err) if isinstance(err, FaceRefineError)
                                 else f"not an image array: {err}"])
    outcome = _restore(torch.tensor(rgb, dtype=torch.float32).div_(255.0)[None], settings, progress)
    if outcome.ok:
        outcome.alpha = alpha
        if image.ndim == 2:  # keep the caller's layout
            outcome.image = outcome.image.mean(axis=2).round().astype(np.uint8)
    return outcome


def restore_pil(image, settings: Settings, progress: Optional[Callable] = None) -> Outcome:
    try:
        array = np.asarray(image.convert("RGBA" if "A" in image.getbands() else "RGB"))
    except Exception as err:
        return Outcome(messages=[f"could not read the image: {err}"])
    return restore_array(array, settings, progress)


def restore_file(path, settings: Settings, progress: Optional[Callable] = None,
                 max_megapixels: Optional[float] = DEFAULT_MAX_MEGAPIXELS) -> Outcome:
    """Load an image file (EXIF orientation, 16-bit and alpha kept), restore it. Never raises.

    ``outcome.tensor`` keeps the full precision for saving with core.image_io.save_image.
    """
    name = Path(str(path)).name
    try:
        check_image_file(path, max_megapixels)
        from ..core.image_io import load_image
        loaded = load_image(path)
    except BaseException as err:  # noqa: BLE001
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        return Outcome(messages=[f"{name}: {friendly_error(err)}"])
    outcome = _restore(loaded.image, settings, progress)
    outcome.messages = [f"{name}: {m}" for m in outcome.messages]
    outcome.source = loaded
    if outcome.ok and loaded.alpha is not None:
        outcome.alpha = (loaded.alpha.clamp(0, 1) * 255).round().byte().cpu().numpy()
    return outcome


def split_array(image) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """RGB uint8 [H,W,3] and alpha [H,W] (or None) from gray, RGB or RGBA arrays of any numeric type."""
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.size == 0:
        raise ImageInputError(f"expected an image array [H,W] or [H,W,C], got {getattr(image, 'shape', type(image))}")
    if image.dtype != np.uint8:
        finite = np.nan_to_num(image.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if np.issubdtype(image.dtype, np.floating) and float(finite.max()) <= 1.0 else 1.0
        image = np.clip(finite * scale, 0, 255).round().astype(np.uint8)
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2), None
    channels = image.shape[2]
    if channels == 1:
        return np.repeat(image, 3, axis=2), None
    if channels == 3:
        return image, None
    if channels == 4:
        return image[:, :, :3], image[:, :, 3]
    raise ImageInputError(f"expected 1, 3 or 4 channels, got {channels}")


def check_image_file(path, max_megapixels: Optional[float] = DEFAULT_MAX_MEGAPIXELS) -> tuple[int, int]:
    """(width, height) from the file header; refuses non-images and images over the pixel limit
    (core.image_io.check_image_file: the one check every front end uses)."""
    from ..core.image_io import check_image_file as core_check
    limit = int(max_megapixels * 1e6) if max_megapixels else None
    return core_check(path, limit, name="")


def _restore(images, settings: Settings, progress: Optional[Callable]) -> Outcome:
    """images: float32 [1,H,W,3] 0..1."""
    import torch
    outcome = Outcome()
    h, w = images.shape[1:3]
    try:
        with _lock:
            result = run_pipeline(images, settings, progress)
        restored = result["images"][0]
        outcome.tensor = restored
        outcome.image = (restored.clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
        if outcome.image.shape[:2] != (h, w):
            raise FaceRefineError(f"internal error: output size {outcome.image.shape[:2]} != input {(h, w)}")
        outcome.rows = result["rows"]
        outcome.faces = len(result["rows"])
        outcome.messages += result["messages"]
        outcome.ok = True
    except BaseException as err:  # noqa: BLE001 - the host must keep running whatever happens here
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        outcome.messages.append(friendly_error(err))
        outcome.image = outcome.tensor = None
    outcome.info = infotext(settings, outcome)
    return outcome


def run_pipeline(images, settings: Settings, progress: Optional[Callable] = None) -> dict:
    """Call core.pipeline.restore_images, score the faces before/after, flatten for the front ends.

    progress(stage, done, total) as in restore_images.
    """
    from ..core import pipeline
    options = build_options(pipeline, settings)
    result = pipeline.restore_images(images, options, steps=_cached_steps(pipeline, options, settings),
                                     progress=progress)
    messages = [str(m) for m in result.warnings]
    note = result.lookup_note  # reused steps report their note once
    if note and str(note) not in messages:
        messages.append(str(note))
    # the pipeline scored the faces with settings.metric (or said why not): the result keeps no face pixels
    before, after = result.original_crops, result.face_crops
    return {"images": result.images, "rows": face_rows(before, after, settings.metric), "messages": messages}


def _cached_steps(pipeline, options, settings: Settings):
    """The restoration steps (with their loaded models) of the latest settings, reused while they hold: they
    depend on the lookup and refine options (a reference photo by its path or identity), seed and device."""
    reference = settings.reference
    key = (options.lookup, dataclasses.replace(options.refine, reference=None), options.seed, options.device,
           reference if isinstance(reference, (str, Path, type(None))) else id(reference),
           default_restorer() if options.lookup.restorer == DEFAULT_RESTORER else options.lookup.restorer)
    if _STEPS.get("key") != key:
        _STEPS.clear()  # free the previous models before loading others
        steps = pipeline.build_steps(options)
        _STEPS.update(key=key, steps=steps)
    return _STEPS["steps"]


def build_options(pipeline, settings: Settings):
    """RestoreOptions from Settings (every control of core/controls.py; one not given is the table's default):
    images as tensors, the device resolved."""
    values = {}
    for name, value in vars(settings).items():
        c = controls.BY_NAME[name]
        value = value if given(value) else c.default
        values[name] = _image(value) if c.kind == "image" else value
    values.update(device=pipeline.resolve_device(values["device"]))
    return pipeline.RestoreOptions.from_values(**values)


def _image(image):
    """An image the user gave as a [1,H,W,3] float tensor (path or array), or None."""
    if not given(image):
        return None
    import torch
    if isinstance(image, (str, Path)):
        from ..core.image_io import load_image
        check_image_file(image)
        return load_image(image).image
    rgb, _ = split_array(np.asarray(image))
    return torch.from_numpy(np.ascontiguousarray(rgb)).float().div_(255.0)[None]


def face_rows(before_crops, after_crops, metric: Optional[str]) -> list[dict]:
    """One row per face: where it is and its quality before/after (normalised 0..1, higher = better)."""
    if after_crops is None:
        return []
    name = None
    if metric:
        from ..core.score import canonical_name
        name = canonical_name(metric)
    before = before_crops.latest_quality(name) if before_crops is not None and name else []
    after = after_crops.latest_quality(name) if name else []
    rows = []
    for i, face in enumerate(after_crops.faces):
        b = before[i] if i < len(before) else None
        a = after[i] if i < len(after) else None
        rows.append({
            "image": face.image_index, "face": i, "bbox": [round(float(v)) for v in face.bbox],
            "detector score": round(float(face.score), 3),
            "metric": (a or b).metric if (a or b) else "-",
            "before": None if b is None else round(float(b.normalized), 3),
            "after": None if a is None else round(float(a.normalized), 3),
            "raw before": None if b is None else round(float(b.raw), 3),
            "raw after": None if a is None else round(float(a.raw), 3),
        })
    return rows


def infotext(settings: Settings, outcome: Outcome) -> dict:
    if not outcome.ok:
        return {"FaceRefine": "error: " + (" ".join(outcome.messages[-1].split()) if outcome.messages else "unknown")}
    info = {"FaceRefine": settings.restorer, "FaceRefine quality": round(settings.quality, 3),
            "FaceRefine fidelity": round(settings.fidelity, 3), "FaceRefine faces": outcome.faces}
    if settings.refine_steps:
        info["FaceRefine refine"] = (f"{int(settings.refine_steps)} steps, "
                                     f"strength {round(settings.identity_strength, 3)}")
    if settings.visibility < 1:
        info["FaceRefine visibility"] = round(settings.visibility, 3)
    deltas = [r["after"] - r["before"] for r in outcome.rows if r["after"] is not None and r["before"] is not None]
    if deltas:
        info["FaceRefine quality gain"] = round(float(np.mean(deltas)), 3)
    return info


# ---------------------------------------------------------------- JSON API (the webui route /facerefine/v1/restore)

MAX_REQUEST_BYTES = 64 * 2**20  # one base64 image field (an 8K PNG is far inside it)


class RequestError(FaceRefineError):
    """A request the API answers with 400 (the message says what to change)."""


def decode_base64_image(data: Any, field_name: str) -> np.ndarray:
    """RGB(A) uint8 array from a base64 string (a data: URL prefix is accepted). The header's size is checked
    against the pixel limit before any decoding; nothing is written to or read from disk."""
    import base64
    import binascii
    import io

    from PIL import Image

    from ..core.image_io import check_pixel_limit
    if not isinstance(data, str) or not data:
        raise RequestError(f"'{field_name}' must be a base64-encoded image")
    if len(data) > MAX_REQUEST_BYTES * 4 // 3 + 4:
        raise RequestError(f"'{field_name}' is larger than {MAX_REQUEST_BYTES // 2**20} MB")
    try:
        raw = base64.b64decode(data.split(",", 1)[1] if data.startswith("data:") else data, validate=True)
        with Image.open(io.BytesIO(raw)) as im:
            check_pixel_limit(*im.size, name=field_name)
            return np.array(im.convert("RGBA" if "A" in im.getbands() else "RGB"))
    except FaceRefineError:
        raise
    except (binascii.Error, ValueError, OSError, Image.DecompressionBombError) as err:
        raise RequestError(f"'{field_name}' is not a readable base64 image: {err}") from None


def encode_base64_png(outcome: Outcome) -> str:
    import base64
    import io
    buffer = io.BytesIO()
    outcome.pil_image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def api_controls() -> tuple[str, ...]:
    """The fields a request may set: the controls the API offers (core/controls.py), by name."""
    return tuple(c.name for c in controls.shown_in("api"))


def settings_from_request(payload: Any, defaults: Settings) -> Settings:
    """Settings from a JSON object: the image's controls by their core/controls.py names, checked against the
    table's ranges and choices; images (the reference photo) as base64. Paths are never accepted. Absent fields
    keep ``defaults`` (the webui's Settings -> FaceRefine)."""
    if not isinstance(payload, dict):
        raise RequestError("the request body must be a JSON object")
    fields = api_controls()
    unknown = sorted(set(payload) - set(fields) - {"image"})
    if unknown:
        raise RequestError(f"unknown field(s) {unknown}; the fields are image, {', '.join(fields)}")
    values = {name: payload[name] for name in fields if payload.get(name) is not None}
    for name, value in values.items():
        if controls.BY_NAME[name].kind == "image":
            values[name] = decode_base64_image(value, name)
    refused = refuse_restorer(values.get("restorer"))
    if refused:
        raise RequestError(refused)
    return settings_from_values(values, defaults, strict=True)


def restore_request(payload: Any, defaults: Optional[Settings] = None) -> tuple[int, dict]:
    """(HTTP status, JSON answer) for one API request. Never raises: bad input is a 400 with a message, a
    failed restoration a 200 with ok=false and the messages."""
    try:
        image = decode_base64_image(payload.get("image") if isinstance(payload, dict) else None, "image")
        settings = settings_from_request(payload, defaults or Settings())
    except FaceRefineError as err:
        return 400, {"ok": False, "messages": [friendly_error(err)]}
    outcome = restore_array(image, settings)
    answer = {"ok": outcome.ok, "faces": outcome.faces, "face_rows": outcome.rows, "messages": outcome.messages,
              "info": outcome.info, "image": encode_base64_png(outcome) if outcome.ok else None}
    return 200, answer


def unload() -> None:
    """Free cached models (the webui's 'unload after use')."""
    with _lock:
        _STEPS.clear()
    try:
        from ..core import pipeline
        pipeline.clear_cache()
        from ..core.score import clear_cache as clear_metrics
        clear_metrics()
    except Exception as err:
        _log(f"unload failed: {err}")
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


# ---------------------------------------------------------------- errors

def friendly_error(err: BaseException) -> str:
    """One line a user can act on. Unexpected errors also print their traceback to stderr."""
    if isinstance(err, FaceRefineError):
        return str(err)
    text = str(err)
    if isinstance(err, MemoryError) or "out of memory" in text.lower():
        return ("out of memory: try a smaller image, fewer faces or the cpu device "
                f"({type(err).__name__}: {text.splitlines()[0] if text else ''})")
    name = type(err).__name__
    if name in ("UnidentifiedImageError",):
        return f"not an image file: {text}"
    if name == "DecompressionBombError":
        return f"image too large: {text}"
    _log("".join(traceback.format_exception(type(err), err, err.__traceback__)))
    return f"unexpected error ({name}): {text}"


def _log(message: str) -> None:
    print(f"[FaceRefine] {message}", file=sys.stderr)
