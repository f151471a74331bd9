"""Small real-architecture models and inputs for the refine tests (no downloaded weights)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from facerefine.core.lookup.options import LookupOptions

# FFHQ 512 template landmarks; crops below are "already aligned", so source = crop pixels.
TEMPLATE_512 = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                         [201.26117, 371.41043], [313.08905, 371.15118]])


def small_arcface(seed: int = 0):
    """facexlib's ArcFace IR-SE classes (Backbone + bottleneck_IR_SE) with one unit per stage:
    same layers, input (112^2) and 512-d output as IR-SE50, ~4x cheaper for the shared CPU."""
    from facexlib.recognition.arcface_arch import Backbone, bottleneck_IR_SE

    from facerefine.models.arch.identity import ArcFaceEmbedder, IdentityModel
    torch.manual_seed(seed)
    net = Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se")
    net.body = torch.nn.Sequential(bottleneck_IR_SE(64, 64, 2), bottleneck_IR_SE(64, 128, 2),
                                   bottleneck_IR_SE(128, 256, 2), bottleneck_IR_SE(256, 512, 2))
    return IdentityModel(ArcFaceEmbedder(net)).eval()


@lru_cache(maxsize=2)
def tiny_restorer_path(tmp_dir: str) -> str:
    from tiny_models import make_tiny_iqpfr
    return str(make_tiny_iqpfr(f"{tmp_dir}/tiny_iqpfr.safetensors"))


def load_tiny_restorer(tmp_dir):
    from facerefine.models.restorers import load_restorer
    return load_restorer(tiny_restorer_path(str(tmp_dir)), "cpu")


def make_faces(n: int = 2, size: int = 512, seed: int = 0):
    """FaceCrops of smooth random 'faces' with template geometry."""
    from facerefine.core.types import FaceCrops, FaceInfo
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=g)
    crops = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic").clamp(0, 1)
    eye = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    lm = TEMPLATE_512 * size / 512
    faces = tuple(FaceInfo(eye, eye, lm, (0, 0, size, size), 0.99, i, (size, size)) for i in range(n))
    return FaceCrops(crops, faces, size, history=("crop",))


def lookup_latent(face_crops, restorer, fidelity: float = 0.5):
    """The lookup step's outputs (FACE_CROPS restored, FACE_LATENT) via core.lookup when it exists,
    else the same calls on the restorer's lookup surface."""
    try:
        from facerefine.core.lookup.lookup import lookup
    except ImportError:
        lookup = None
    if lookup is not None:
        return lookup(face_crops, restorer, LookupOptions(quality=1.0, fidelity=fidelity))
    from facerefine.core.types import FaceLatent
    cb = restorer.codebook
    x = torch.nn.functional.interpolate(face_crops.crops, size=(restorer.img_size,) * 2, mode="bilinear",
                                        antialias=True)
    with torch.no_grad():
        lq, skips = cb.encode(x * 2 - 1)
        logits = cb.logits(lq, cb.film(torch.ones(len(face_crops))))
        idx = logits.argmax(-1)
        q = cb.finish_quantize(cb.code_features(idx), lq)
        out = ((cb.decode(q, skips, fidelity) + 1) / 2).clamp(0, 1)
    latent = FaceLatent(restorer.name, restorer.architecture, lq, q, idx, logits, skips, fidelity)
    return face_crops.with_crops(out, "lookup"), latent


def tiny_prior(latent, seed: int = 0, random_output: bool = True):
    from facerefine.models.arch.latent_prior import build_latent_prior
    torch.manual_seed(seed)
    prior = build_latent_prior(latent_channels=latent.quantized.shape[1], cond_channels=latent.lq_features.shape[1],
                               latent_size=latent.quantized.shape[-1], hidden=32, depth=1, heads=2)
    prior.fit_statistics(latent.quantized, latent.lq_features)
    if random_output:
        with torch.no_grad():
            prior.out.weight.normal_(0, 0.05)
    return prior.eval()
