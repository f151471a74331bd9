"""The lookup step as the pipeline calls it: the restorer loaded once, then called per batch of crops."""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

from ...models.restorers import load_restorer
from ..types import FaceCrops, FaceLatent
from .lookup import lookup
from .options import LookupOptions


class LookupStep:
    """``step(face_crops) -> (restored, latent, note)``; ``step.restorer`` is the loaded handle (refine decodes
    with it)."""

    name = "lookup"

    def __init__(self, options: LookupOptions, device: str):
        self.options = replace(options, mode=options.mode or "auto", critic=options.critic or None)
        self.restorer = load_restorer(options.restorer, device, quality_condition=options.quality_condition or None)
        self._noted: set = set()

    def __call__(self, face_crops: FaceCrops) -> tuple[FaceCrops, FaceLatent, Optional[str]]:
        """The note (e.g. why the slider fell back to another mode) is returned once per step, not per call."""
        restored, latent = lookup(face_crops, self.restorer, self.options)
        note = latent.extra.get("note")
        if note in self._noted:
            note = None
        elif note:
            self._noted.add(note)
        return restored, latent, note


def prepare_lookup(options: LookupOptions, device: str) -> Optional[LookupStep]:
    """The lookup step, or None for ``restorer=none``."""
    return LookupStep(options, device) if options.wanted else None
