"""restore_images: the data flow every front end runs (CLI, ComfyUI all-in-one node, A1111, gradio app).

    IMAGE ─crop─▶ FACE_CROPS ─score (if asked)─▶ ─lookup─▶ FACE_CROPS + FACE_LATENT ─refine─▶ FACE_CROPS ─paste─▶ IMAGE + MASK

Each step is called directly with its own small options object (CropOptions, LookupOptions, RefineOptions,
PasteOptions). ``build_steps`` loads the models of the lookup and refine steps once, so a batch of images
reuses them; ``restore_images`` runs the flow on one batch. Front ends build RestoreOptions from the table of
controls (core/controls.py) with ``RestoreOptions.from_values``.
"""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Optional

import torch

from ..models.device import resolve_device  # noqa: F401 - the one device resolver, re-exported for callers
from .crop.options import CropOptions
from .crop.step import align_faces, detect_faces
from .grayscale import keep_grayscale
from .heap import release_free_memory
from .image_io import sanitize_images
from .lookup.latent import concat_latents
from .lookup.options import LookupOptions
from .lookup.step import LookupStep, prepare_lookup
from .paste.options import PasteOptions
from .paste.step import paste_back
from .refine.options import RefineOptions
from .refine.step import RefineStep, prepare_refine
from .types import FaceCrops, FaceLatent, RawDetections

log = logging.getLogger("facerefine")

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class RestoreOptions:
    crop: CropOptions = field(default_factory=CropOptions)
    lookup: LookupOptions = field(default_factory=LookupOptions)
    refine: RefineOptions = field(default_factory=RefineOptions)
    paste: PasteOptions = field(default_factory=PasteOptions)
    metric: Optional[str] = None      # NR-IQA metric: score the faces before and after restoration
    device: str = "auto"              # used by every step (overrides the crop/paste device)
    seed: int = 0
    allow_color: bool = False         # False: a grayscale input comes back grayscale (core/grayscale.py)

    @classmethod
    def from_values(cls, crop: Optional[CropOptions] = None, paste: Optional[PasteOptions] = None,
                    **values: Any) -> "RestoreOptions":
        """Options from flat control values (names of core/controls.py: quality, refine_steps, detector...);
        each value goes to the step that owns it. ``crop``/``paste``: full option objects to start from."""
        from .controls import split_values
        parts = split_values(values)
        return cls(crop=replace(crop or CropOptions(), **parts.pop("crop", {})),
                   lookup=LookupOptions(**parts.pop("lookup", {})),
                   refine=RefineOptions(**parts.pop("refine", {})),
                   paste=replace(paste or PasteOptions(), **parts.pop("paste", {})),
                   **parts.pop("pipeline", {}))

    @property
    def wants_restorer(self) -> bool:
        return self.lookup.wanted

    def crop_options(self, device: str) -> CropOptions:
        return replace(self.crop, device=device)

    def paste_options(self, device: str) -> PasteOptions:
        return replace(self.paste, device=device)


@dataclass
class RestoreSteps:
    """The loaded restoration steps: lookup (None for restorer=none), then refine (None when off)."""

    lookup: Optional[LookupStep] = None
    refine: Optional[RefineStep] = None

    def __len__(self) -> int:
        return int(self.lookup is not None) + int(self.refine is not None)

    @property
    def names(self) -> list[str]:
        return [s.name for s in (self.lookup, self.refine) if s is not None]


def build_steps(options: RestoreOptions) -> RestoreSteps:
    """Load the detector, the lookup restorer and the refine step's prior and identity network once, for every
    image of a run."""
    device = resolve_device(options.device)
    # every weights file the run needs is resolved here, before the first image: a missing one stops the
    # run at once with one message, and no image is treated differently from the others (issue 18)
    from .crop.detectors import load_detector
    load_detector(options.crop_options(device).detector, device)
    lookup_step = prepare_lookup(options.lookup, device)
    refine_step = (prepare_refine(options.refine, device, options.seed, options.crop_options(device))
                   if lookup_step is not None else None)
    if refine_step is not None:
        refine_step.prepare(lookup_step.restorer)
    return RestoreSteps(lookup_step, refine_step)


# Faces restored at once. Memory is bounded by one chunk whatever the number of faces (issue 26): crops, latents
# and masks of a chunk are freed before the next. A multiple of the lookup and refine batches (8), and refine
# seeds each face by its index among all the batch's faces, so chunking never changes a pixel.
FACE_CHUNK = 8


@dataclass
class RestoreResult:
    images: torch.Tensor                # [B,H,W,3]
    masks: torch.Tensor                 # [B,H,W] paste weights
    face_crops: FaceCrops               # final (restored) faces; crops [N,3,0,0] (no pixels) unless keep_crops
    original_crops: FaceCrops           # faces before restoration, likewise
    latent: Optional[FaceLatent]        # every face's FACE_LATENT with keep_crops, else None
    timings: dict
    warnings: list
    lookup_note: Optional[str] = None   # the lookup step's note (e.g. slider inactive), also when reported before

    @property
    def faces_per_image(self) -> list[int]:
        counts = [0] * int(self.images.shape[0])
        for f in self.face_crops.faces:
            counts[f.image_index] += 1
        return counts


def restore_images(images: torch.Tensor, options: RestoreOptions = RestoreOptions(),
                   steps: Optional[RestoreSteps] = None, timings: Optional[dict] = None,
                   progress: Optional[Progress] = None,
                   should_stop: Optional[Callable[[], bool]] = None, keep_crops: bool = False,
                   face_chunk: int = FACE_CHUNK) -> RestoreResult:
    """Restore every face of a batch [B,H,W,C]. ``steps=None`` builds them from ``options``.

    Faces go through align -> score -> lookup -> refine -> paste ``face_chunk`` at a time, so peak memory does
    not grow with the number of faces. ``keep_crops``: keep every face's crops and latent in the result.
    ``progress(stage, done, total)`` is called after each stage (of each chunk: host progress bars and cancel
    checks); ``should_stop()`` is polled inside the refine loop (host cancel).
    """
    timings = {} if timings is None else timings
    report = progress or (lambda *a: None)
    images = sanitize_images(images)
    steps = build_steps(options) if steps is None else steps
    total = 2 + len(steps)
    device = resolve_device(options.device)
    crop_options, paste_options = options.crop_options(device), options.paste_options(device)

    detections, notes = detect(images, crop_options, timings)
    report("crop", 1, total)
    out, masks = images, torch.zeros(images.shape[:3])
    befores, afters, latents, lookup_note = [], [], [], None
    for start, part in face_chunks(detections, face_chunk):
        crops = align_faces(images, part, crop_options, timings)
        before = score(crops, options.metric, device, notes) if options.metric else crops
        restored, latent = restore_faces(before, steps, notes, timings, should_stop,
                                         lambda name, k: report(name, 1 + k, total), index_offset=start)
        if options.metric and before is not crops:
            restored = score(restored, options.metric, device, notes)
        if out is images:
            out = images.clone()
        out, weights = paste_back(out, restored, paste_options, timings, in_place=True)
        torch.maximum(masks, weights, out=masks)
        lookup_note = lookup_note or (getattr(latent, "extra", None) or {}).get("note")
        befores.append(before if keep_crops else _no_pixels(before))
        afters.append(restored if keep_crops else _no_pixels(restored))
        latents += [latent] if keep_crops and latent is not None else []
        del crops, before, restored, latent, weights
        release_free_memory()  # freed chunks must not pile up as heap fragments
    out = keep_grayscale(images, out, options.allow_color)
    report("paste", total, total)
    size = crop_options.crop_size
    latent = concat_latents(latents) if latents else None
    return RestoreResult(out, masks, FaceCrops.concat(afters, size), FaceCrops.concat(befores, size), latent,
                         timings, list(dict.fromkeys(notes)), lookup_note)


def face_chunks(detections: list[RawDetections], size: int) -> Iterator[tuple[int, list[RawDetections]]]:
    """(index of the chunk's first face, per-image detections holding only the chunk's faces), in face order."""
    faces = [(b, k) for b, det in enumerate(detections) for k in range(det.boxes.shape[0])]
    size = max(1, int(size))
    for start in range(0, len(faces), size):
        picked = faces[start:start + size]
        yield start, [_pick(det, [k for i, k in picked if i == b]) for b, det in enumerate(detections)]


def _pick(det: RawDetections, keep: list[int]) -> RawDetections:
    idx = torch.as_tensor(keep, dtype=torch.long)
    return RawDetections(det.boxes[idx], det.scores[idx], det.landmarks[idx])


def _no_pixels(crops: FaceCrops) -> FaceCrops:
    """The face records without their pixels (crops [N,3,0,0]): what a result keeps of a finished chunk."""
    return replace(crops, crops=crops.crops.new_zeros(len(crops), 3, 0, 0), parsing_masks=None)


def detect(images: torch.Tensor, options: CropOptions, timings: Optional[dict] = None
           ) -> tuple[list[RawDetections], list]:
    """Detect faces; detector warnings become notes (also logged)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        detections = detect_faces(images, options, timings)
    notes = [str(w.message) for w in caught]
    if not any(det.boxes.shape[0] for det in detections):
        notes.append("no face found; the image is left unchanged")
    for msg in notes:
        log.warning("FaceRefine: %s", msg)
    return detections, notes


def crop(images: torch.Tensor, options: CropOptions, timings: Optional[dict] = None) -> tuple[FaceCrops, list]:
    """Detect and align every face at once; detector warnings become notes (also logged)."""
    detections, notes = detect(images, options, timings)
    return align_faces(images, detections, options, timings), notes


def score(crops: FaceCrops, metric: str, device: str, notes: list) -> FaceCrops:
    """Attach the metric's score to each face; scores are informational, so a failure is a note."""
    from .score import score_face_crops
    try:
        return score_face_crops(crops, metric, device)
    except Exception as err:  # noqa: BLE001 - a missing metric must not cost the restoration
        notes.append(f"quality scores unavailable: {err}")
        return crops


def restore_faces(crops: FaceCrops, steps: RestoreSteps, notes: list, timings: Optional[dict] = None,
                  should_stop: Optional[Callable[[], bool]] = None,
                  after_step: Optional[Callable[[str, int], None]] = None,
                  index_offset: int = 0) -> tuple[FaceCrops, Optional[FaceLatent]]:
    """lookup -> refine on aligned crops. The degraded crops go to refine as its identity target.
    ``index_offset``: the index of the first of these faces among all faces (refine seeds each face by it)."""
    timings = {} if timings is None else timings
    restored, latent = crops, None
    if crops.is_empty:
        return restored, latent
    if steps.lookup is not None:
        start = time.perf_counter()
        restored, latent, note = steps.lookup(crops)
        if note:
            notes.append(note)
        timings["lookup"] = timings.get("lookup", 0.0) + time.perf_counter() - start
        if after_step is not None:
            after_step("lookup", 1)
    if steps.refine is not None:
        start = time.perf_counter()
        restored = steps.refine(restored, latent, steps.lookup.restorer if steps.lookup else None,
                                lq_crops=crops.crops, warnings=notes, should_stop=should_stop,
                                index_offset=index_offset)
        timings["refine"] = timings.get("refine", 0.0) + time.perf_counter() - start
        if after_step is not None:
            after_step("refine", len(steps))
    return restored, latent


def clear_cache() -> None:
    """Forget loaded detectors and face parsers (restorer steps keep their own caches)."""
    from ..models.cache import clear
    clear("detector")
    clear("parser")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


__all__ = ["FACE_CHUNK", "RestoreOptions", "RestoreResult", "RestoreSteps", "build_steps", "clear_cache", "crop",
           "detect", "face_chunks", "restore_faces", "restore_images", "resolve_device", "score"]
