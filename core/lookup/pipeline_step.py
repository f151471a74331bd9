"""The lookup step as the pipeline calls it: the restorer loaded once, then called per batch of crops."""
from __future__ import annotations

from typing import Optional

from ..types import FaceCrops, FaceLatent
from .lookup import lookup
from .options import LookupOptions
from .restorer import load_restorer


class LookupStep:
    """``step(face_crops) -> (restored, latent, note)``; ``step.restorer`` is the loaded handle (refine decodes
    with it)."""

    name = "lookup"

    def __init__(self, options: LookupOptions, device: str):
        self.options = options
        self.restorer = load_restorer(options.restorer, device, quality_condition=options.quality_condition or None)
        self._noted: set = set()

    def __call__(self, face_crops: FaceCrops) -> tuple[FaceCrops, FaceLatent, Optional[str]]:
        """The note (e.g. why the slider fell back to another mode) is returned once per step, not per call."""
        o = self.options
        restored, latent = lookup(face_crops, self.restorer, quality=o.quality, fidelity=o.fidelity,
                                  mode=o.mode or "auto", critic=o.critic or None)
        note = latent.extra.get("note")
        if note in self._noted:
            note = None
        elif note:
            self._noted.add(note)
        return restored, latent, note


def prepare_lookup(options: LookupOptions, device: str) -> Optional[LookupStep]:
    """The lookup step, or None for ``restorer=none``."""
    return LookupStep(options, device) if options.wanted else None
