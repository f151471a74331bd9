"""The refine step as the pipeline calls it, and the loaders it needs (latent prior, reference photo)."""
from __future__ import annotations

import logging
from typing import Callable, Optional

import torch

from ...errors import FaceRefineError, WeightsNotFoundError
from ..types import FaceCrops, FaceLatent
from .options import RefineOptions
from .refine import DEFAULT_IDENTITY_STRENGTH, refine

log = logging.getLogger("facerefine")


# Restorers shipped with a prior trained on their own latent.
PAIRED_PRIORS = {"facerefine-compact": "facerefine-compact-prior",
                 "facerefine_compact.safetensors": "facerefine-compact-prior",
                 "facerefine-compact-v2": "facerefine-compact-v2-prior",
                 "facerefine_compact_v2.safetensors": "facerefine-compact-v2-prior"}
# Restorers shipped with an Identity Recovery Network trained on their latent, per identity network
# (the IRN predicts that network's embedding of the clean face).
PAIRED_IDENTITY = {"facerefine-compact-v2": {"dlib": "facerefine-compact-v2-identity-dlib"},
                   "facerefine_compact_v2.safetensors": {"dlib": "facerefine-compact-v2-identity-dlib"}}


def default_identity_recovery(restorer_name: Optional[str], network: str) -> Optional[str]:
    """The registry name of the IRN shipped for this restorer and identity network, if any."""
    return PAIRED_IDENTITY.get(str(restorer_name or ""), {}).get(network)


def default_prior_name(architecture: str, restorer_name: Optional[str] = None) -> str:
    paired = PAIRED_PRIORS.get(str(restorer_name or ""))
    return paired or f"latent-prior-{architecture.lower()}"


def load_prior(name_or_path: Optional[str], architecture: str, device, warnings: Optional[list] = None,
               restorer_name: Optional[str] = None):
    """The latent prior by name/path; with no name, the registry default for the restorer's
    architecture if present, else None (identity guidance only) with a warning."""
    from ...models.arch.latent_prior import load_latent_prior
    from ...models.locate import resolve
    if name_or_path and str(name_or_path).lower() not in ("none", "(none)"):
        return load_latent_prior(resolve(name_or_path, "facerefine"), device)
    if name_or_path is not None and str(name_or_path).lower() in ("none", "(none)"):
        return None
    try:
        path = resolve(default_prior_name(architecture, restorer_name), "facerefine", download=False)
    except WeightsNotFoundError:
        msg = (f"no trained latent prior for {architecture} found (train one with `python -m facerefine train "
               f"prior --config ...`); refining with identity guidance only")
        log.warning("FaceRefine: %s", msg)
        if warnings is not None:
            warnings.append(msg)
        return None
    return load_latent_prior(path, device)


def load_reference(reference) -> Optional[torch.Tensor]:
    if reference is None or isinstance(reference, (torch.Tensor, FaceCrops)):
        return reference
    from ..image_io import load_image
    return load_image(reference).image


class RefineStep:
    """``step(face_crops, latent, restorer, lq_crops, warnings, should_stop, index_offset) -> face_crops``.

    ``prepare(restorer)`` loads the latent prior and the identity network for the lookup's restorer; the
    pipeline calls it before the first image (``build_steps``), so a missing file stops a run before any work
    and every image of a run is refined the same way. Notes from loading (e.g. "no trained latent prior:
    identity guidance only") are reported once, with the first image."""

    name = "refine"

    def __init__(self, options: RefineOptions, device: str, seed: int = 0):
        self.options, self.device, self.seed = options, torch.device(device), int(seed)
        self.reference = load_reference(options.reference)
        self._aligned: dict = {}  # crop size -> the reference aligned once (FaceCrops)
        self._prior_loaded = False
        self._checked = False
        self._pending_notes: list = []
        self.prior = None
        self.id_model = None

    def prepare(self, restorer) -> None:
        """Load the latent prior (registry default of the restorer's architecture, or the given one) and the
        identity network now. Raises the loaders' errors (missing file, wrong architecture)."""
        o = self.options
        notes: list = []
        if o.detail_only:  # only the identity check of the reference detail: no prior, no IRN
            from ...models.arch.identity import load_id_model
            self.id_model = load_id_model(o.id_model or "auto", None, self.device)
            self._prior_loaded = True
            return
        self.prior = load_prior(o.latent_prior, restorer.architecture, self.device, notes,
                                restorer_name=restorer.name)
        if float(o.identity_strength) != 0 or (self.reference is not None and float(o.reference_detail) > 0):
            from ...models.arch.identity import load_id_model, resolve_id_model
            recovery = o.identity_recovery or None
            if recovery is not None and str(recovery).lower() in ("none", "(none)"):
                recovery = None
            elif recovery is None and o.target == "recovery":
                # the IRN shipped for this restorer and network, when asked for: on held-out faces its target
                # did not beat the degraded face's own (docs/identity_eval.md), so `auto` does not load it
                recovery = default_identity_recovery(restorer.name, resolve_id_model(o.id_model or "auto"))
                if recovery is not None:
                    from ...models.locate import resolve
                    try:
                        resolve(recovery, "facerefine", download=False)
                    except WeightsNotFoundError:
                        msg = (f"the Identity Recovery Network shipped for {restorer.name} ({recovery}) is missing; "
                               f"the identity target is the degraded face")
                        log.warning("FaceRefine: %s", msg)
                        notes.append(msg)
                        recovery = None
            self.id_model = load_id_model(o.id_model or "auto", recovery, self.device)
        self._pending_notes += notes
        self._prior_loaded = True

    def _check(self, latent: FaceLatent, warnings: list) -> None:
        """The registry default prior may model another latent size: checked once, on the first latent.
        A prior the user chose that does not fit is an error naming its file."""
        explicit = self.options.latent_prior and str(self.options.latent_prior).lower() not in ("none", "(none)")
        if self.prior is not None and explicit:
            try:
                self.prior.check_latent(latent.quantized, latent.lq_features)
            except ValueError as err:
                raise FaceRefineError(f"latent prior {self.options.latent_prior} does not fit the restorer "
                                      f"{getattr(latent, 'restorer', '')}: {err}; load the prior trained for "
                                      f"this restorer, or none") from None
        if self.prior is not None and not self.options.latent_prior:
            try:
                self.prior.check_latent(latent.quantized, latent.lq_features)
            except ValueError as err:
                msg = f"the default latent prior does not fit this restorer ({err}); identity guidance only"
                log.warning("FaceRefine: %s", msg)
                self._pending_notes.append(msg)
                self.prior = None
        self._checked = True

    def __call__(self, face_crops: FaceCrops, latent: Optional[FaceLatent], restorer,
                 lq_crops: Optional[torch.Tensor] = None, warnings: Optional[list] = None,
                 should_stop: Optional[Callable[[], bool]] = None, index_offset: int = 0) -> FaceCrops:
        """``index_offset``: the index of the first of these faces in the run's faces (each face's seed)."""
        if self.options.detail_only:
            return self._detail_only(face_crops)
        if latent is None or restorer is None:
            raise FaceRefineError("the refine step needs the lookup step's FACE_LATENT and restorer; it runs after "
                                  "lookup with a codebook restorer (CodeFormer or IQPFR)")
        if not self._prior_loaded:
            self.prepare(restorer)
        if not self._checked:
            self._check(latent, [])
        if self._pending_notes:
            if warnings is not None:
                warnings.extend(self._pending_notes)
            self._pending_notes = []
        o = self.options
        return refine(face_crops, latent, restorer, self.prior, self.id_model, steps=int(o.steps),
                      strength=float(o.strength), identity_strength=float(o.identity_strength),
                      reference=self.aligned_reference(face_crops.crop_size),
                      reference_detail=float(o.reference_detail), sampler=o.sampler, seed=self.seed,
                      device=self.device, target=o.target or "auto", guidance_steps=o.guidance_steps,
                      identity_views=o.identity_views, should_stop=should_stop, lq_crops=lq_crops,
                      index_offset=index_offset)

    def aligned_reference(self, crop_size: int):
        """The reference photo through the crop step once per crop size (the same for every image of a run)."""
        if self.reference is None or isinstance(self.reference, FaceCrops):
            return self.reference
        if crop_size not in self._aligned:
            from .guidance import reference_face
            self._aligned[crop_size] = reference_face(self.reference, crop_size)  # raises: no face in it
        return self._aligned[crop_size]

    def _detail_only(self, face_crops: FaceCrops) -> FaceCrops:
        """Refine steps 0 with a reference photo: only its fine detail, for the faces that are its person."""
        from .refine import apply_reference_detail
        if face_crops.is_empty:
            return face_crops
        if not self._prior_loaded:
            self.prepare(None)
        crops, _ = apply_reference_detail(face_crops, self.aligned_reference(face_crops.crop_size), self.id_model,
                                          float(self.options.reference_detail), self.device)
        return crops


def prepare_refine(options: RefineOptions, device: str, seed: int = 0) -> Optional[RefineStep]:
    """The refine step, or None when it has nothing to do (0 steps and no reference photo)."""
    return RefineStep(options, device, seed) if options.wanted else None


__all__ = ["RefineStep", "prepare_refine", "load_prior", "load_reference", "default_prior_name",
           "default_identity_recovery",
           "DEFAULT_IDENTITY_STRENGTH"]
