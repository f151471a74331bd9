"""The refine step of core.pipeline.restore_images (registered after the lookup step)."""
from __future__ import annotations

import logging
from typing import Optional

import torch

from ...errors import FaceRefineError, WeightsNotFoundError
from ..types import FaceCrops
from .refine import DEFAULT_IDENTITY_STRENGTH, DEFAULT_SAMPLER, DEFAULT_STRENGTH, refine

log = logging.getLogger("facerefine")


# Restorers shipped with a prior trained on their own latent.
PAIRED_PRIORS = {"facerefine-compact": "facerefine-compact-prior",
                 "facerefine_compact.safetensors": "facerefine-compact-prior"}


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
               f"latent-prior`); refining with identity guidance only")
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


def build_refine_step(options):
    """pipeline StepBuilder: a refine step when ``options.refine_steps > 0``."""
    steps = int(getattr(options, "refine_steps", 0) or 0)
    if steps <= 0 or not options.wants_restorer:
        return None
    strength = float(getattr(options, "refine_strength", DEFAULT_STRENGTH))
    identity_strength = float(options.identity_strength)
    sampler = getattr(options, "refine_sampler", DEFAULT_SAMPLER)
    reference = load_reference(options.reference)
    handles: dict = {}

    def step(face_crops: FaceCrops, ctx) -> FaceCrops:
        if ctx.latent is None:
            raise FaceRefineError("the refine step needs the lookup step's FACE_LATENT; it must run after lookup "
                                  "with a codebook restorer (CodeFormer or IQPFR)")
        from ..pipeline import resolve_device  # lazy: the pipeline imports this module
        device = torch.device(resolve_device(options.device))
        restorer = ctx.state.get("restorer")
        if restorer is None:
            raise FaceRefineError("the refine step needs the lookup step's restorer (ctx.state['restorer'])")
        if "prior" not in handles:
            explicit = getattr(options, "latent_prior", None)
            prior = load_prior(explicit, ctx.latent.architecture, device, ctx.warnings, restorer_name=restorer.name)
            if prior is not None and not explicit:  # the registry default may model another latent size
                try:
                    prior.check_latent(ctx.latent.quantized, ctx.latent.lq_features)
                except ValueError as err:
                    msg = f"the default latent prior does not fit this restorer ({err}); identity guidance only"
                    log.warning("FaceRefine: %s", msg)
                    ctx.warnings.append(msg)
                    prior = None
            handles["prior"] = prior
        if "id_model" not in handles:
            handles["id_model"] = None
            if identity_strength != 0:
                from ...models.arch.identity import load_id_model
                handles["id_model"] = load_id_model(getattr(options, "id_model", "auto") or "auto",
                                                    getattr(options, "identity_recovery", None) or None, device)
        return refine(face_crops, ctx.latent, restorer, handles["prior"], handles["id_model"], steps=steps,
                      strength=strength, identity_strength=identity_strength, reference=reference,
                      sampler=sampler, seed=options.seed, device=device,
                      target=getattr(options, "identity_target", "auto"),
                      guidance_steps=getattr(options, "refine_guidance_steps", None),
                      should_stop=ctx.state.get("should_stop"),  # host cancel check (ComfyUI all-in-one)
                      lq_crops=ctx.state.get("lq_crops"))
    return step


def register() -> None:
    from ..pipeline import register_step_builder
    register_step_builder("refine", build_refine_step)


__all__ = ["build_refine_step", "register", "load_prior", "load_reference", "DEFAULT_IDENTITY_STRENGTH"]
