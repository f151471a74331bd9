"""What the nodes show in ComfyUI: quality scores, before/after previews for web/facerefine.js, node output."""
from __future__ import annotations

import logging
import os
from typing import Any, Optional, Sequence

import torch

from ..errors import FaceRefineError
from .host import folder_paths, get_device

log = logging.getLogger("facerefine")


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
