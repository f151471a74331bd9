"""User options of the refine step (CLR-Face identity-guided latent refinement)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .refine import DEFAULT_REFERENCE_DETAIL, DEFAULT_SAMPLER, DEFAULT_STRENGTH


@dataclass(frozen=True)
class RefineOptions:
    steps: int = 0                         # refine steps (0 = no refine)
    strength: float = DEFAULT_STRENGTH     # SDEdit noise level 0..1
    identity_strength: float = 0.0         # identity guidance strength (0 = prior only)
    sampler: str = DEFAULT_SAMPLER         # one of core.refine.samplers.SAMPLERS
    latent_prior: Optional[str] = None     # name/path; None = registry default if present, "none" = off
    id_model: str = "auto"                 # identity network: auto (ArcFace if on disk, else embedded dlib) | arcface | dlib | path
    identity_recovery: Optional[str] = None  # trained IRN + latent mask file (optional)
    target: str = "auto"                   # identity target: auto | reference | recovery | lq
    guidance_steps: Optional[int] = None   # fresh identity gradients per refine (None = refine default: every step)
    identity_views: Optional[int] = None   # augmented views per identity gradient (None = refine default)
    reference: Optional[Any] = None        # reference photo: path or [1,H,W,3] tensor
    reference_detail: float = DEFAULT_REFERENCE_DETAIL  # the reference's fine detail into blurred faces (0 = off)

    @property
    def detail_only(self) -> bool:
        """No refine steps, but a reference photo whose detail is transferred (works with any restorer)."""
        return int(self.steps or 0) <= 0 and self.reference is not None and float(self.reference_detail) > 0

    @property
    def wanted(self) -> bool:
        return int(self.steps or 0) > 0 or self.detail_only
