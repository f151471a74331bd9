"""Reference detail: a photo of the same person lends its fine detail where the restored face has none.

A heavily degraded face has lost its fine detail (eyelids, iris, brows, lip lines); the restorer can only
guess it. An aligned photo of the same person holds the real detail. For each restored crop:

1. the reference crop (aligned by the crop step to the same template) is matched in colour inside the
   face box, and registered to the restored crop by dense optical flow (OpenCV DIS) on low-passed grey
   images, so a turned head or another expression moves with it;
2. a confidence map keeps only the pixels where the warped reference agrees with the restored face at low
   frequencies (an open mouth, hair over the brow, a flow error fall to 0);
3. the detail band (image minus its Gaussian blur at ``band_sigma``) of the restored face is replaced by the
   reference's, scaled by the *detail deficit*: how much less band energy the restored face has than the
   reference inside the face box. A sharp restored face (mild damage) has no deficit and is left alone;
   a blurred one takes the reference's detail.

Only the face of each image that the identity network finds nearest to the reference, and within
``MATCH_DISTANCE`` of it, takes detail: the other people of a group photo are left alone. Tuned on London
*training* identities by PSNR (``lab/eval/tune_reference_detail.py``); the held-out effect is in
docs/identity_eval.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from ..detail.transfer import (BAND_SIGMA, TOLERANCE, deficit_weight, detail_band, detail_deficit, face_box,
                               match_colours, new_flow, register)
from ..types import FaceCrops
from .reference import ReferenceFace

DEFICIT_RANGE = (0.1, 0.5)   # detail deficit mapped to 0..1 of the transfer
# Unit-embedding distance (the identity network's) above which a face is not the reference's person. dlib's
# restored training faces at heavy damage are at most 0.48 from their own reference photo.
MATCH_DISTANCE = 0.6


@dataclass
class DetailReport:
    amount: list = field(default_factory=list)       # transfer weight per face (0 = left alone)
    deficit: list = field(default_factory=list)      # detail deficit per face
    confidence: list = field(default_factory=list)   # mean registration confidence inside the face box
    skipped: list = field(default_factory=list)      # (face index, reason)


def face_deficit_weights(restored: torch.Tensor, reference: ReferenceFace, landmarks: np.ndarray) -> list:
    """Per face [N,3,S,S] (no registration: aligned crops, energies averaged over the face box): how much of
    its detail the face lacks against the reference, as the 0..1 weight the transfer would use."""
    ref = np.ascontiguousarray(reference.crop[0].float().cpu().permute(1, 2, 0).numpy(), dtype=np.float32)
    out = []
    for i in range(len(restored)):
        face = np.ascontiguousarray(restored[i].float().cpu().permute(1, 2, 0).numpy(), dtype=np.float32)
        if ref.shape != face.shape:
            import cv2
            ref = cv2.resize(ref, face.shape[1::-1], interpolation=cv2.INTER_AREA)
        box = face_box(landmarks[i], face.shape[0])
        matched = match_colours(ref, face, box)
        out.append(deficit_weight(detail_deficit(detail_band(face), detail_band(matched), box), DEFICIT_RANGE))
    return out


def transfer_face(restored: np.ndarray, reference: np.ndarray, landmarks: np.ndarray, amount: float = 1.0,
                  band_sigma: float = BAND_SIGMA, deficit_range=DEFICIT_RANGE, tolerance: float = TOLERANCE,
                  flow=None) -> tuple[np.ndarray, float, float, float]:
    """One face: restored and reference [S,S,3] float32 0..1 (aligned crops) -> (output, weight, deficit,
    confidence)."""
    x0, y0, x1, y1 = face_box(landmarks, restored.shape[0])
    ref = match_colours(reference, restored, (x0, y0, x1, y1))
    warped, confidence = register(restored, ref, tolerance, flow)
    detail_ref, detail_out = detail_band(warped, band_sigma), detail_band(restored, band_sigma)
    deficit = detail_deficit(detail_out, detail_ref, (x0, y0, x1, y1))
    weight = float(amount) * deficit_weight(deficit, deficit_range)
    out = restored + weight * confidence[..., None] * (detail_ref - detail_out)
    return out.clip(0, 1).astype(np.float32), weight, float(deficit), float(confidence[y0:y1, x0:x1].mean())


@torch.no_grad()
def same_person(id_model, face_crops: FaceCrops, landmarks: torch.Tensor, reference: ReferenceFace, device="cpu",
                threshold: float = MATCH_DISTANCE) -> list[bool]:
    """Per face: is it the person of the reference photo? In each image only the face nearest to the
    reference (unit-embedding distance of the identity network) can be, and only below ``threshold``."""
    from .guidance import embed
    device = torch.device(device)
    faces = torch.nn.functional.normalize(embed(id_model, face_crops.crops.float().to(device), landmarks).float(),
                                          dim=1)
    ref = torch.nn.functional.normalize(embed(id_model, reference.crop.float().to(device),
                                              reference.landmarks).float(), dim=1)
    dist = [float(d) for d in (faces - ref).norm(dim=1).cpu()]
    nearest: dict[int, int] = {}
    for i, face in enumerate(face_crops.faces):
        j = nearest.get(face.image_index)
        if j is None or dist[i] < dist[j]:
            nearest[face.image_index] = i
    return [dist[i] < threshold and nearest[f.image_index] == i for i, f in enumerate(face_crops.faces)]


@torch.inference_mode()
def transfer_reference_detail(restored: FaceCrops, reference: ReferenceFace, amount: float = 1.0,
                              landmarks: Optional[np.ndarray] = None, same_person: Optional[list] = None,
                              **kw) -> tuple[FaceCrops, DetailReport]:
    """Every restored crop takes the reference's fine detail where it lacks it.

    landmarks: [N,5,2] crop fractions (the crops' own when None). same_person: per face, False leaves that face
    alone (identity check by the caller). ``kw``: band_sigma, deficit_range, tolerance."""
    from ..crop.landmarks import crop_landmarks
    report = DetailReport()
    n = len(restored)
    if n == 0 or amount <= 0:
        return restored, report
    lms = crop_landmarks(restored) if landmarks is None else np.asarray(landmarks)
    ref = reference.crop.float().cpu()
    if ref.shape[-1] != restored.crop_size:
        ref = torch.nn.functional.interpolate(ref, size=(restored.crop_size,) * 2, mode="bicubic",
                                              antialias=True).clamp(0, 1)
    flow = new_flow()
    crops = restored.crops.float().cpu()
    outs = []
    for i in range(n):
        if same_person is not None and not same_person[i]:
            report.skipped.append((i, "not the person in the reference photo"))
            report.amount.append(0.0), report.deficit.append(float("nan")), report.confidence.append(0.0)
            outs.append(crops[i])
            continue
        r = np.ascontiguousarray(crops[i].permute(1, 2, 0).numpy(), dtype=np.float32)
        f = np.ascontiguousarray(ref[0].permute(1, 2, 0).numpy(), dtype=np.float32)
        out, weight, deficit, conf = transfer_face(r, f, lms[i], amount, flow=flow, **kw)
        report.amount.append(weight), report.deficit.append(deficit), report.confidence.append(conf)
        outs.append(torch.from_numpy(out).permute(2, 0, 1))
    if not any(report.amount):
        return restored, report
    result = torch.stack(outs).to(restored.crops.dtype)
    return restored.with_crops(result, "reference-detail"), report
