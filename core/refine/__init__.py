"""Refine step: identity-guided latent diffusion refinement (CLR-Face) of the lookup result."""
from .refine import (DEFAULT_GUIDANCE_STEPS, DEFAULT_IDENTITY_STRENGTH, DEFAULT_IDENTITY_VIEWS, DEFAULT_SAMPLER,
                     DEFAULT_STEPS, DEFAULT_STRENGTH, RefineInterrupted, RefineResult, apply_reference_detail, refine,
                     refine_latent, restorer_decoder, select_latent)
from .samplers import SAMPLERS, karras_sigmas, sdedit_sigmas

__all__ = ["refine", "refine_latent", "apply_reference_detail", "restorer_decoder", "select_latent", "RefineResult",
           "RefineInterrupted", "SAMPLERS", "karras_sigmas", "sdedit_sigmas", "DEFAULT_STEPS", "DEFAULT_STRENGTH",
           "DEFAULT_IDENTITY_STRENGTH", "DEFAULT_SAMPLER", "DEFAULT_GUIDANCE_STEPS", "DEFAULT_IDENTITY_VIEWS"]
