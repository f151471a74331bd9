"""The lookup step of core.pipeline.restore_images (registered before the refine step)."""
from __future__ import annotations

from ..types import FaceCrops


def build_lookup_step(options):
    """pipeline StepBuilder: loads the restorer once; None for ``--restorer none``."""
    if not options.wants_restorer:
        return None
    from ..pipeline import resolve_device
    from .lookup import lookup
    from .restorer import load_restorer
    restorer = load_restorer(options.restorer, resolve_device(options.device),
                             quality_condition=getattr(options, "quality_condition", None) or None)
    mode = getattr(options, "lookup_mode", "auto") or "auto"
    critic = getattr(options, "critic", None) or None
    noted: set = set()
    pending = list(getattr(restorer, "load_notes", []) or [])  # what 'auto' skipped: told once

    def step(face_crops: FaceCrops, ctx) -> FaceCrops:
        restored, latent = lookup(face_crops, restorer, quality=options.quality, fidelity=options.fidelity,
                                  mode=mode, critic=critic)
        ctx.latent = latent
        ctx.state["restorer"] = restorer
        ctx.state["lookup_mode"] = latent.extra.get("mode")
        while pending:
            ctx.warnings.append(pending.pop(0))
        note = latent.extra.get("note")
        if note and note not in noted:
            noted.add(note)
            ctx.warnings.append(note)
        return restored
    return step


def register() -> None:
    from ..pipeline import register_step_builder
    register_step_builder("lookup", build_lookup_step, before="refine")
