"""The lookup step: restorers (models/restorers.py) through the codebook lookup, the IQPFR quality slider and
fidelity. Import from the submodules (this package imports nothing, so ``options`` stays torch-free):

    from facerefine.models.restorers import load_restorer
    from facerefine.core.lookup.lookup import decode, lookup
    from facerefine.core.lookup.options import LookupOptions

    restorer = load_restorer("codeformer", "cuda")               # or a path; GFPGAN/RestoreFormer too
    crops, latent = lookup(face_crops, restorer, LookupOptions(quality=1.0, fidelity=0.5))
    faces = decode(restorer, latent.quantized, latent.skip_features, latent.fidelity)   # for the refine step

options.py (LookupOptions, MODES), lookup.py (lookup, decode, resolve_mode), steering.py (training-free
steering), latent.py (FACE_LATENT), input_detail.py (the input's detail above the model's size), step.py.
"""
