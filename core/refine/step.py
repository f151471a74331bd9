"""The refine step as the pipeline calls it, and the loaders it needs (latent prior, identity network)."""
from __future__ import annotations

import logging
from typing import Callable, Optional

import torch

from ...errors import FaceRefineError, WeightsNotFoundError
from ..crop.options import CropOptions
from ..none import is_none
from ..types import FaceCrops, FaceLatent
from .options import NONE, RefineOptions
from .reference import ReferenceFace
from .refine import RefineRun, apply_reference_detail, refine

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


def load_prior(name_or_path: Optional[str], device, architecture: str, restorer_name: Optional[str] = None,
               warnings: Optional[list] = None):
    """The latent prior by name/path ("none" spellings: None); with no name, the registry default for the
    restorer (its paired prior, else its architecture's) if present, else None (identity guidance only) with a
    warning."""
    from ...models.arch.latent_prior import load_latent_prior
    from ...models.locate import resolve
    if name_or_path is not None:
        return None if is_none(name_or_path) else load_latent_prior(resolve(name_or_path, "facerefine"), device)
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


def identity_recovery_for(options: RefineOptions, restorer_name: Optional[str], notes: list) -> Optional[str]:
    """The IRN file to load: the user's, or for target "recovery" the one shipped for the restorer and identity
    network (on held-out faces its target did not beat the degraded face's own, docs/identity_eval.md, so
    `auto` does not load it); a shipped one that is missing is a note."""
    from ...models.arch.identity import resolve_id_model
    from ...models.locate import resolve
    if options.identity_recovery is not None or options.target != "recovery":
        return None if options.identity_recovery == NONE else options.identity_recovery
    recovery = default_identity_recovery(restorer_name, resolve_id_model(options.id_model))
    if recovery is not None:
        try:
            resolve(recovery, "facerefine", download=False)
        except WeightsNotFoundError:
            msg = (f"the Identity Recovery Network shipped for {restorer_name} ({recovery}) is missing; "
                   f"the identity target is the degraded face")
            log.warning("FaceRefine: %s", msg)
            notes.append(msg)
            return None
    return recovery


class RefineStep:
    """``step(face_crops, latent, restorer, lq_crops, warnings, should_stop, index_offset) -> face_crops``.

    ``prepare(restorer)`` loads the latent prior and the identity network for the lookup's restorer and finds the
    reference photo's face (with the run's crop options); the pipeline calls it before the first image
    (``build_steps``), so a missing file or a reference without a face stops a run before any work, and every
    image of a run is refined the same way. Notes from loading (e.g. "no trained latent prior: identity guidance
    only") are reported once, with the first image."""

    name = "refine"

    def __init__(self, options: RefineOptions, device: str, seed: int = 0, crop: Optional[CropOptions] = None):
        """``crop``: the run's crop options (the reference's detector, device and crop size; default: auto on
        the CPU, at the faces' crop size)."""
        self.options, self.device, self.seed, self.crop = options, torch.device(device), int(seed), crop
        self.reference: Optional[ReferenceFace] = None
        self._prepared = False
        self._checked = False
        self._pending_notes: list = []
        self.prior = None
        self.id_model = None

    def prepare(self, restorer) -> None:
        """Load the latent prior (registry default of the restorer's architecture, or the given one) and the
        identity network now. Raises the loaders' errors (missing file, wrong architecture, no face)."""
        from ...models.arch.identity import load_id_model
        o = self.options
        if self.crop is not None and o.reference is not None:
            self.reference_face(self.crop.crop_size)
        wants_id = o.id_model != NONE and (float(o.identity_strength) != 0 or
                                           (o.reference is not None and float(o.reference_detail) > 0))
        if o.detail_only:  # only the identity check of the reference detail: no prior, no IRN
            self.id_model = load_id_model(o.id_model, self.device) if o.id_model != NONE else None
        else:
            self.prior = load_prior(o.latent_prior, self.device, restorer.architecture, restorer.name,
                                    self._pending_notes)
            if wants_id:
                recovery = identity_recovery_for(o, restorer.name, self._pending_notes)
                self.id_model = load_id_model(o.id_model, self.device, recovery)
        self._prepared = True

    def reference_face(self, crop_size: int) -> Optional[ReferenceFace]:
        """The reference photo's face at this crop size, found once per run (raises NoFaceError)."""
        if self.options.reference is None:
            return None
        if self.reference is None or self.reference.crop_size != crop_size:
            self.reference = ReferenceFace.from_photo(self.options.reference, crop_size, self.crop)
        return self.reference

    def _check(self, latent: FaceLatent) -> None:
        """The registry default prior may model another latent size: checked once, on the first latent.
        A prior the user chose that does not fit is an error naming its file."""
        chosen = self.options.latent_prior
        if self.prior is not None:
            try:
                self.prior.check_latent(latent.quantized, latent.lq_features)
            except ValueError as err:
                if chosen is not None:
                    raise FaceRefineError(f"latent prior {chosen} does not fit the restorer "
                                          f"{getattr(latent, 'restorer', '')}: {err}; load the prior trained for "
                                          f"this restorer, or none") from None
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
        if not self._prepared:
            self.prepare(restorer)
        if not self._checked:
            self._check(latent)
        if self._pending_notes:
            if warnings is not None:
                warnings.extend(self._pending_notes)
            self._pending_notes = []
        run = RefineRun(restorer, self.prior, self.id_model, self.reference_face(face_crops.crop_size), self.device,
                        self.seed, should_stop)
        return refine(face_crops, latent, run, self.options, lq_crops, index_offset)

    def _detail_only(self, face_crops: FaceCrops) -> FaceCrops:
        """Refine steps 0 with a reference photo: only its fine detail, for the faces that are its person."""
        if face_crops.is_empty:
            return face_crops
        if not self._prepared:
            self.prepare(None)
        crops, _ = apply_reference_detail(face_crops, self.reference_face(face_crops.crop_size), self.id_model,
                                          float(self.options.reference_detail), self.device)
        return crops


def prepare_refine(options: RefineOptions, device: str, seed: int = 0,
                   crop: Optional[CropOptions] = None) -> Optional[RefineStep]:
    """The refine step, or None when it has nothing to do (0 steps and no reference photo). ``crop``: the run's
    crop options (the reference photo's face is found with them)."""
    return RefineStep(options, device, seed, crop) if options.wanted else None


__all__ = ["PAIRED_IDENTITY", "PAIRED_PRIORS", "RefineStep", "default_identity_recovery", "default_prior_name",
           "identity_recovery_for", "load_prior", "prepare_refine"]
