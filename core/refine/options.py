"""User options of the refine step (CLR-Face identity-guided latent refinement) and its defaults.

The one home of the refine defaults; torch-free (the controls table and argparse import it at start-up).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..none import is_none

DEFAULT_STEPS = 8
DEFAULT_STRENGTH = 0.4
DEFAULT_IDENTITY_STRENGTH = 0.5
DEFAULT_SAMPLER = "dpmpp_2m"
SAMPLERS = ("dpmpp_2m", "euler", "heun", "ddim")  # core/refine/samplers.py: SAMPLER_FUNCTIONS
TARGETS = ("auto", "reference", "recovery", "lq")
# Fresh identity gradients per refine (each costs a decoder forward + backward): one at every default step. One
# gradient reused for all steps overshoots in v2's latent (coloured blocks at strength >= 1, docs/identity_eval.md).
DEFAULT_GUIDANCE_STEPS = DEFAULT_STEPS
# Augmented views of the decoded face averaged into each identity gradient (1 = the face alone).
DEFAULT_IDENTITY_VIEWS = 4
# With a reference photo: how much of its fine detail a blurred restored face takes (0 = off).
DEFAULT_REFERENCE_DETAIL = 1.0
# latent_prior / identity_recovery / id_model spelled as "no model" ("none", "(none)", any case) become this
NONE = "none"


@dataclass(frozen=True)
class RefineOptions:
    """Normalised on creation: "none" / "(none)" for latent_prior, identity_recovery and id_model becomes NONE (a
    blank field keeps the default), and id_model NONE (no identity network) means no identity guidance."""
    steps: int = 0                         # refine steps (0 = no refine)
    strength: float = DEFAULT_STRENGTH     # SDEdit noise level 0..1
    identity_strength: float = DEFAULT_IDENTITY_STRENGTH  # identity guidance strength (0 = prior only)
    sampler: str = DEFAULT_SAMPLER         # one of SAMPLERS
    latent_prior: Optional[str] = None     # name/path; None = registry default if present, NONE = off
    # identity network: auto (ArcFace if on disk, else the embedded dlib ResNet) | arcface | dlib | path | NONE
    id_model: str = "auto"
    identity_recovery: Optional[str] = None  # IRN + latent mask file; None = the restorer's own for target recovery
    target: str = "auto"                   # identity target: one of TARGETS
    guidance_steps: Optional[int] = None   # fresh identity gradients per refine (None = DEFAULT_GUIDANCE_STEPS)
    identity_views: Optional[int] = None   # augmented views per identity gradient (None = DEFAULT_IDENTITY_VIEWS)
    reference: Optional[Any] = None        # reference photo as given: path, [H,W,3] array or [1,H,W,3] tensor
    reference_detail: float = DEFAULT_REFERENCE_DETAIL  # the reference's fine detail into blurred faces (0 = off)
    gate_by_detail: bool = True            # toward a reference: scale each face's guidance by the detail it lacks

    def __post_init__(self) -> None:
        # a blank text field (ComfyUI STRING, gradio textbox) leaves the default, as it always did
        for name in ("latent_prior", "identity_recovery"):  # None: the default file
            value = getattr(self, name)
            if value is not None and not str(value).strip():
                object.__setattr__(self, name, None)
            elif value is not None and is_none(value):
                object.__setattr__(self, name, NONE)
        if self.id_model is None or not str(self.id_model).strip():
            object.__setattr__(self, "id_model", "auto")
        elif is_none(self.id_model):  # no identity network: the latent prior alone
            object.__setattr__(self, "id_model", NONE)
            object.__setattr__(self, "identity_strength", 0.0)
        if not self.target:
            object.__setattr__(self, "target", "auto")

    @property
    def detail_only(self) -> bool:
        """No refine steps, but a reference photo whose detail is transferred (works with any restorer)."""
        return int(self.steps or 0) <= 0 and self.reference is not None and float(self.reference_detail) > 0

    @property
    def wanted(self) -> bool:
        return int(self.steps or 0) > 0 or self.detail_only


__all__ = ["DEFAULT_GUIDANCE_STEPS", "DEFAULT_IDENTITY_STRENGTH", "DEFAULT_IDENTITY_VIEWS", "DEFAULT_REFERENCE_DETAIL",
           "DEFAULT_SAMPLER", "DEFAULT_STEPS", "DEFAULT_STRENGTH", "NONE", "RefineOptions", "SAMPLERS", "TARGETS"]
