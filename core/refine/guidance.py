"""Identity guidance: targets, the latent mask and the masked gradient of the identity network's cosine
similarity (ArcFace or the embedded dlib ResNet, whichever ``id_model`` names)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import FaceRefineError
from ..types import FaceCrops
from ..crop.landmarks import crop_landmarks
from .options import TARGETS
from .reference import ReferenceFace


def _region_boxes(lm: np.ndarray) -> list[tuple[float, float, float, float]]:
    """Eyes+brows, nose and mouth boxes (x0, y0, x1, y1 in crop fractions) from 5 landmarks."""
    eye_l, eye_r, nose, mouth_l, mouth_r = lm
    d = max(float(np.linalg.norm(eye_r - eye_l)), 1e-3)
    boxes = [(e[0] - 0.42 * d, e[1] - 0.55 * d, e[0] + 0.42 * d, e[1] + 0.25 * d) for e in (eye_l, eye_r)]
    eye_y = (eye_l[1] + eye_r[1]) / 2
    boxes.append((nose[0] - 0.28 * d, eye_y, nose[0] + 0.28 * d, nose[1] + 0.18 * d))
    mouth_y = (mouth_l[1] + mouth_r[1]) / 2
    boxes.append((min(mouth_l[0], mouth_r[0]) - 0.15 * d, mouth_y - 0.28 * d,
                   max(mouth_l[0], mouth_r[0]) + 0.15 * d, mouth_y + 0.28 * d))
    return boxes


def region_prior_mask(face_crops: FaceCrops, size: tuple[int, int]) -> torch.Tensor:
    """[N,1,h,w] 0/1: latent cells overlapping the eyes/brows, nose or mouth regions."""
    h, w = size
    masks = torch.zeros(len(face_crops), 1, h, w)
    for n, lm in enumerate(crop_landmarks(face_crops)):
        for x0, y0, x1, y1 in _region_boxes(lm):
            c0, c1 = int(np.clip(np.floor(x0 * w), 0, w)), int(np.clip(np.ceil(x1 * w), 0, w))
            r0, r1 = int(np.clip(np.floor(y0 * h), 0, h)), int(np.clip(np.ceil(y1 * h), 0, h))
            masks[n, 0, r0:r1, c0:c1] = 1.0
    return masks


def guidance_mask(face_crops: FaceCrops, id_model, size: tuple[int, int]) -> tuple[torch.Tensor, str]:
    """The learned latent mask when the identity model has one for this grid, else the region prior."""
    learned = getattr(id_model, "mask", None)
    if learned is not None and tuple(learned.logits.shape[-2:]) == tuple(size):
        with torch.no_grad():
            m = learned.hard().detach().float().cpu()
        return m.expand(len(face_crops), 1, *size).clone(), "learned"
    return region_prior_mask(face_crops, size), "region-prior"


def embed(id_model, crops: torch.Tensor, landmarks: Optional[torch.Tensor] = None) -> torch.Tensor:
    """id_model.embed, with the crops' 5 landmarks (crop fractions [N,5,2]) for networks that align by them."""
    if landmarks is not None and getattr(id_model, "uses_landmarks", False):
        return id_model.embed(crops, landmarks.to(crops.device))
    return id_model.embed(crops)


def identity_target(id_model, target: str, n: int, *, reference: Optional[ReferenceFace] = None,
                    lq_crops: Optional[torch.Tensor] = None, lq_latent: Optional[torch.Tensor] = None,
                    device: torch.device | str = "cpu", landmarks: Optional[torch.Tensor] = None
                    ) -> tuple[torch.Tensor, str]:
    """Unit target embeddings [N,D] (D = 512 ArcFace, 128 dlib) and which source was used.
    ``landmarks``: the faces' 5 landmarks in crop fractions [N,5,2] (for lq/recovery targets)."""
    if target not in TARGETS:
        raise FaceRefineError(f"unknown identity target '{target}'; choose one of {TARGETS}")
    if target == "auto":
        if reference is not None:
            target = "reference"
        elif getattr(id_model, "recovery", None) is not None and lq_crops is not None and lq_latent is not None:
            target = "recovery"
        else:
            target = "lq"
    with torch.no_grad():
        if target == "reference":
            if reference is None:
                raise FaceRefineError("identity target 'reference' needs a reference photo")
            emb = embed(id_model, reference.crop.to(device), reference.landmarks).expand(n, -1)
        elif target == "recovery":
            if getattr(id_model, "recovery", None) is None:
                raise FaceRefineError("identity target 'recovery' needs an identity model with a trained "
                                      "Identity Recovery Network (load one with the ID model loader)")
            if lq_crops is None or lq_latent is None:
                raise FaceRefineError("identity target 'recovery' needs the degraded crops and latent")
            if getattr(id_model, "uses_landmarks", False) and landmarks is not None:
                emb = id_model.recover(lq_crops.to(device), lq_latent.to(device), landmarks.to(device))
            else:
                emb = id_model.recover(lq_crops.to(device), lq_latent.to(device))
        else:
            if lq_crops is None:
                raise FaceRefineError("identity target 'lq' needs the degraded face crops")
            emb = embed(id_model, lq_crops.to(device), landmarks)
    return F.normalize(emb.float(), dim=1), target


def augmented_views(faces: torch.Tensor, views: int, generators: Optional[Sequence[torch.Generator]] = None
                    ) -> torch.Tensor:
    """[N,3,S,S] -> [N*views,3,S,S]: view 0 is the face itself, the others are differentiable random
    re-framings (shift <= 3 %, scale 0.95-1.05, rotation <= 4 degrees), resolution losses (down to 45-100 %
    of the side and back) and gains (+-6 %). Averaging the identity gradient over them keeps what survives
    such changes (identity) and drops what does not (pixel patterns that fool only the guide network).
    ``generators``: one per face, so a face's views do not depend on the batch it is in."""
    if views <= 1:
        return faces
    n, c, s, _ = faces.shape
    k = views - 1
    gens = list(generators) if generators is not None else [None] * n
    rnd = torch.cat([torch.rand(k, 6, generator=g) for g in gens]).to(faces.device, torch.float32)
    angle = (rnd[:, 0] * 2 - 1) * (4 * np.pi / 180)
    scale = 0.95 + 0.10 * rnd[:, 1]
    shift = (rnd[:, 2:4] * 2 - 1) * 0.06  # normalised coordinates: 0.06 = 3 % of the side
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    src = faces.repeat_interleave(k, dim=0)
    grid = F.affine_grid(theta.to(src.dtype), [n * k, c, s, s], align_corners=False)
    moved = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = []
    for j in range(n * k):  # each view its own resolution loss
        side = max(16, int(round(s * (0.45 + 0.55 * float(rnd[j, 4])))))
        v = moved[j:j + 1]
        if side < s:
            v = F.interpolate(F.interpolate(v, size=(side, side), mode="bilinear", antialias=True,
                                            align_corners=False), size=(s, s), mode="bilinear", align_corners=False)
        out.append(v * (0.94 + 0.12 * float(rnd[j, 5])))
    aug = torch.cat(out).reshape(n, k, c, s, s)
    return torch.cat([faces.unsqueeze(1), aug], 1).reshape(n * views, c, s, s)


@dataclass(frozen=True)
class IdentityGoal:
    """Per face: the unit target embedding [N,D], the latent positions that may change [N,1,h,w] (0/1), the
    crop landmarks [N,5,2] (dlib's chip) and the similarity at which guidance stops (None = never)."""
    target: torch.Tensor
    mask: torch.Tensor
    landmarks: Optional[torch.Tensor] = None
    margin: Optional[float] = None


def identity_gradient(z0: torch.Tensor, decode: Callable[[torch.Tensor], torch.Tensor], id_model,
                      goal: IdentityGoal, views: int = 1,
                      generators: Optional[Sequence[torch.Generator]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked, per-face RMS-normalised gradient of cos(embed(decode(z0)), goal.target) w.r.t. z0,
    plus the similarities (of the face itself). Positions where goal.mask == 0 get exactly 0.
    ``views`` > 1 averages the similarity over that many augmented views of each decoded face
    (``augmented_views``, one generator per face); one decoder pass serves them all. Faces whose similarity
    is already at or above ``goal.margin`` get no gradient (a hinge)."""
    landmarks, target, mask, margin = goal.landmarks, goal.target, goal.mask, goal.margin
    views = max(1, int(views))
    with torch.enable_grad():
        z = z0.detach().float().requires_grad_(True)
        faces = decode(z)
        lm = None if landmarks is None else landmarks.repeat_interleave(views, dim=0)
        emb = embed(id_model, augmented_views(faces, views, generators), lm)
        sims = (emb * target.repeat_interleave(views, dim=0)).sum(dim=1).reshape(-1, views)
        (grad,) = torch.autograd.grad(sims.mean(dim=1).sum(), z)
    sim = sims[:, 0]
    grad = torch.nan_to_num(grad.float()) * mask
    if margin is not None:
        grad = grad * (sim.detach() < margin).to(grad.dtype).view(-1, 1, 1, 1)
    count = mask.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1) * grad.shape[1]
    rms = (grad.pow(2).sum(dim=(1, 2, 3), keepdim=True) / count).sqrt()
    return grad / (rms + 1e-12), sim.detach()
