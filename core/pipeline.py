"""restore_images: load -> crop -> restore steps -> paste, shared by the CLI, nodes, A1111 and gradio.

Restoration steps are plugged in through ``register_step_builder``. A builder looks at
the RestoreOptions and returns a step (or None when it has nothing to do); a step is
``step(face_crops, ctx) -> face_crops`` and may leave data for later steps on ``ctx``
(``ctx.latent`` for the FACE_LATENT, ``ctx.state`` for anything else, e.g. model handles).
Steps run in registration order; the lookup step registers before the refine step.
"""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

import torch

from ..errors import FaceRefineError
from .crop import CropOptions, align_faces, detect_faces
from .image_io import sanitize_images
from .paste import PasteOptions, paste_back
from .types import FaceCrops, FaceLatent

log = logging.getLogger("facerefine")

NO_RESTORER = ("", "none")


@dataclass(frozen=True)
class RestoreOptions:
    restorer: str = "none"            # registry name, weights path, or "none" (crop + paste only)
    quality: float = 1.0              # IQPFR quality slider 0..1
    fidelity: float = 0.5             # CodeFormer-style fidelity weight 0..1
    refine_steps: int = 0             # CLR-Face refine steps (0 = no refine)
    identity_strength: float = 0.0    # identity guidance strength in refine
    reference: Optional[Any] = None   # reference photo: path or [1,H,W,3] tensor
    device: str = "auto"              # auto | cpu | cuda; used by every step (overrides crop/paste device)
    seed: int = 0
    refine_strength: float = 0.4      # SDEdit noise level of the refine step (0..1)
    refine_sampler: str = "dpmpp_2m"  # dpmpp_2m | euler | heun | ddim
    latent_prior: Optional[str] = None  # latent prior name/path; None = registry default if present, "none" = off
    id_model: str = "auto"            # identity network: auto (ArcFace if on disk, else embedded dlib) | arcface | dlib | path
    identity_recovery: Optional[str] = None  # trained IRN + latent mask file (optional)
    identity_target: str = "auto"     # auto | reference | recovery | lq
    refine_guidance_steps: Optional[int] = None  # fresh identity gradients per refine (None = refine default, 1)
    lookup_mode: str = "auto"         # auto | trained | training-free | off (quality slider mode)
    quality_condition: Optional[str] = None  # IQPFR conditioning weights for a CodeFormer restorer
    critic: Optional[str] = None      # NR-IQA critic of training-free steering (default face-niqe)
    crop: CropOptions = field(default_factory=CropOptions)
    paste: PasteOptions = field(default_factory=PasteOptions)
    # flat shortcuts for front ends; when set they override the nested crop/paste options
    detector: Optional[str] = None
    visibility: Optional[float] = None
    color_correction: Optional[str] = None
    metric: Optional[str] = None      # NR-IQA metric for a scoring step, if one is registered
    progress: Optional[Callable[[str, int, int], None]] = None

    def crop_options(self, device: str) -> CropOptions:
        extra = {"detector": self.detector} if self.detector else {}
        return replace(self.crop, device=device, **extra)

    def paste_options(self, device: str) -> PasteOptions:
        extra = {}
        if self.visibility is not None:
            extra["visibility"] = float(self.visibility)
        if self.color_correction:
            extra["color_correction"] = self.color_correction
        return replace(self.paste, device=device, **extra)

    @property
    def wants_restorer(self) -> bool:
        return str(self.restorer).strip().lower() not in NO_RESTORER


@dataclass
class StepContext:
    """What restoration steps share during one restore_images call."""

    options: RestoreOptions
    images: torch.Tensor
    latent: Optional[FaceLatent] = None
    state: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)


RestoreStep = Callable[[FaceCrops, StepContext], FaceCrops]
StepBuilder = Callable[[RestoreOptions], Optional[RestoreStep]]

# (name, builder) in run order. "lookup" must be registered for --restorer other than none.
STEP_BUILDERS: list[tuple[str, StepBuilder]] = []


def register_step_builder(name: str, builder: StepBuilder, before: Optional[str] = None) -> None:
    """Add (or replace) a restoration step builder; ``before`` puts it ahead of another step."""
    global STEP_BUILDERS
    STEP_BUILDERS = [(n, b) for n, b in STEP_BUILDERS if n != name]
    names = [n for n, _ in STEP_BUILDERS]
    at = names.index(before) if before in names else len(STEP_BUILDERS)
    STEP_BUILDERS.insert(at, (name, builder))


def build_steps(options: RestoreOptions) -> list[tuple[str, RestoreStep]]:
    steps = []
    for name, builder in STEP_BUILDERS:
        step = builder(options)
        if step is not None:
            steps.append((name, step))
    names = [name for name, _ in steps]
    if "refine" in names and "lookup" in names and names.index("refine") < names.index("lookup"):
        steps.append(steps.pop(names.index("refine")))  # refine needs the lookup's latent
    if options.wants_restorer and not any(name == "lookup" for name, _ in steps):
        raise FaceRefineError(
            f"restorer '{options.restorer}' needs the lookup step, which is not available in this build; "
            f"use --restorer none to crop and paste back only")
    return steps


@dataclass
class RestoreResult:
    images: torch.Tensor                # [B,H,W,3]
    masks: torch.Tensor                 # [B,H,W] paste weights
    face_crops: FaceCrops               # final (restored) crops
    original_crops: FaceCrops           # crops before restoration
    latent: Optional[FaceLatent]
    timings: dict
    warnings: list

    @property
    def faces_per_image(self) -> list[int]:
        counts = [0] * int(self.images.shape[0])
        for f in self.face_crops.faces:
            counts[f.image_index] += 1
        return counts


def restore_images(images: torch.Tensor, options: RestoreOptions = RestoreOptions(),
                   steps: Optional[list[tuple[str, RestoreStep]]] = None, timings: Optional[dict] = None,
                   progress: Optional[Callable[[str, int, int], None]] = None) -> RestoreResult:
    """Restore every face of a batch [B,H,W,C]. ``steps=None`` builds them from ``options``.

    ``progress(stage, done, total)`` is called after each stage (host progress bars).
    """
    timings = {} if timings is None else timings
    images = sanitize_images(images)
    steps = build_steps(options) if steps is None else steps
    total = 2 + len(steps)
    report = progress or options.progress or (lambda *a: None)
    device = resolve_device(options.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        crop_opts = options.crop_options(device)
        detections = detect_faces(images, crop_opts, timings)
        crops = align_faces(images, detections, crop_opts, timings)
    notes = [str(w.message) for w in caught]
    if crops.is_empty:
        notes.append("no face found; the image is left unchanged")
    for msg in notes:
        log.warning("FaceRefine: %s", msg)
    report("crop", 1, total)
    ctx = StepContext(options=options, images=images, timings=timings, warnings=notes)
    ctx.state["lq_crops"] = crops.crops  # the degraded faces (identity target of the refine step)
    restored = crops
    for k, (name, step) in enumerate(steps):
        if restored.is_empty:
            break
        start = time.perf_counter()
        restored = step(restored, ctx)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
        report(name, 2 + k, total)
    out, masks = paste_back(images, restored, options.paste_options(device), timings)
    report("paste", total, total)
    return RestoreResult(out, masks, restored, crops, ctx.latent, timings, ctx.warnings)


def resolve_device(name: Optional[str]) -> str:
    """'auto'/None -> cuda when available, else cpu. Asking for an absent GPU is a user error."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FaceRefineError(f"device '{name}' requested but no CUDA GPU is available; use --device cpu")
    if name.startswith("mps") and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise FaceRefineError(f"device '{name}' requested but MPS is not available; use --device cpu")
    try:
        torch.device(name)
    except RuntimeError as err:
        raise FaceRefineError(f"unknown device '{name}': {err}") from err
    return name


def _register_lookup_step() -> None:
    """The lookup step (restorer through spandrel / IQPFR); puts ctx.latent and ctx.state['restorer']."""
    from .lookup.pipeline_step import register
    register()


def _register_refine_step() -> None:
    """The refine step runs after lookup (it needs ctx.latent and ctx.state['restorer'])."""
    from .refine.pipeline_step import register
    register()


_register_lookup_step()
_register_refine_step()


def clear_cache() -> None:
    """Forget loaded detectors and face parsers (restorer steps keep their own caches)."""
    from .crop.detectors import clear_cache as clear_detectors
    from .paste.masks import clear_cache as clear_parsers
    clear_detectors()
    clear_parsers()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
