"""Codebook lookup step: restorers through spandrel (CodeFormer, GFPGAN, RestoreFormer++) and IQPFR.

    restorer = load_restorer("codeformer", "cuda")               # or a path; GFPGAN/RestoreFormer too
    crops, latent = lookup(face_crops, restorer, quality=1.0, fidelity=0.5, mode="auto")
    faces = decode(restorer, latent.quantized, latent.skip_features, latent.fidelity)   # for the refine step
"""
from .lookup import MODES, as_critic, concat_latents, decode, lookup, no_slider_note, resolve_mode
from .restorer import Restorer, load_restorer
from .steering import SteerResult, budget_grid, steer

__all__ = ["MODES", "Restorer", "SteerResult", "as_critic", "budget_grid", "concat_latents", "decode", "load_restorer", "lookup",
           "no_slider_note", "resolve_mode", "steer"]
