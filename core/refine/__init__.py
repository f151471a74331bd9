"""Refine step: identity-guided latent diffusion refinement (CLR-Face) of the lookup result.

options.py (RefineOptions and every DEFAULT_*, torch-free) · step.py (RefineStep, prepare_refine, load_prior)
· refine.py (refine, refine_latent, RefineRun) · reference.py (ReferenceFace) · guidance.py (identity target,
mask, gradient) · reference_detail.py · samplers.py

Import from the submodules; this package imports nothing (importing ``options`` stays torch-free).
"""
