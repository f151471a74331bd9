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

from ..types import FaceCrops
from .reference import ReferenceFace

BAND_SIGMA = 4.0             # detail band: finer than a Gaussian of this sigma, in pixels of a 512 crop
DEFICIT_RANGE = (0.1, 0.5)   # detail deficit mapped to 0..1 of the transfer
TOLERANCE = 0.06             # low-frequency disagreement (0..1 units) where the confidence falls to 1/e
FLOW_SIZE = 256
# Unit-embedding distance (the identity network's) above which a face is not the reference's person. dlib's
# restored training faces at heavy damage are at most 0.48 from their own reference photo.
MATCH_DISTANCE = 0.6


@dataclass
class DetailReport:
    amount: list = field(default_factory=list)       # transfer weight per face (0 = left alone)
    deficit: list = field(default_factory=list)      # detail deficit per face
    confidence: list = field(default_factory=list)   # mean registration confidence inside the face box
    skipped: list = field(default_factory=list)      # (face index, reason)


def face_box(landmarks: np.ndarray, size: int) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 (pixels) around eyes, brows, nose and mouth from 5 landmarks in crop fractions."""
    lm = np.asarray(landmarks, np.float64) * size
    d = max(float(np.linalg.norm(lm[1] - lm[0])), 8.0)
    x0, x1 = lm[:, 0].min() - 0.5 * d, lm[:, 0].max() + 0.5 * d
    y0, y1 = lm[:2, 1].mean() - 0.6 * d, lm[3:, 1].mean() + 0.4 * d
    clip = lambda v: int(np.clip(round(v), 0, size))  # noqa: E731
    return clip(x0), clip(y0), max(clip(x1), clip(x0) + 1), max(clip(y1), clip(y0) + 1)


def match_colours(reference: np.ndarray, restored: np.ndarray, box) -> np.ndarray:
    """The reference with the restored face's per-channel mean and spread inside the face box."""
    import cv2
    x0, y0, x1, y1 = box
    mean_r, std_r = cv2.meanStdDev(np.ascontiguousarray(restored[y0:y1, x0:x1]))
    mean_f, std_f = cv2.meanStdDev(np.ascontiguousarray(reference[y0:y1, x0:x1]))
    gain = (std_r / (std_f + 1e-4)).ravel()
    bias = mean_r.ravel() - mean_f.ravel() * gain
    return reference * gain.astype(np.float32) + bias.astype(np.float32)


def detail_band(img: np.ndarray, band_sigma: float = BAND_SIGMA) -> np.ndarray:
    """The image minus its Gaussian blur (``band_sigma`` in pixels of a 512 crop)."""
    import cv2
    return img - cv2.GaussianBlur(img, (0, 0), band_sigma * img.shape[0] / 512.0)


def detail_deficit(restored_band: np.ndarray, reference_band: np.ndarray, box) -> float:
    """1 - RMS(restored band) / RMS(reference band) inside the face box: 0 = as detailed as the reference."""
    x0, y0, x1, y1 = box
    energy_ref = float((reference_band[y0:y1, x0:x1] ** 2).mean())
    energy_out = float((restored_band[y0:y1, x0:x1] ** 2).mean())
    return 1.0 - float(np.sqrt(energy_out / max(energy_ref, 1e-12)))


def deficit_weight(deficit: float, deficit_range=DEFICIT_RANGE) -> float:
    lo, hi = deficit_range
    return float(np.clip((deficit - lo) / max(hi - lo, 1e-6), 0.0, 1.0))


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
        out.append(deficit_weight(detail_deficit(detail_band(face), detail_band(matched), box)))
    return out


def _grey(img: np.ndarray, size: int, blur: float) -> np.ndarray:
    import cv2
    small = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA) if img.shape[0] != size else img
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    if blur > 0:
        grey = cv2.GaussianBlur(grey, (0, 0), blur)
    return (grey.clip(0, 1) * 255.0 + 0.5).astype(np.uint8)


def transfer_face(restored: np.ndarray, reference: np.ndarray, landmarks: np.ndarray, amount: float = 1.0,
                  band_sigma: float = BAND_SIGMA, deficit_range=DEFICIT_RANGE, tolerance: float = TOLERANCE,
                  flow=None) -> tuple[np.ndarray, float, float, float]:
    """One face: restored and reference [S,S,3] float32 0..1 (aligned crops) -> (output, weight, deficit,
    confidence)."""
    import cv2
    size = restored.shape[0]
    s = size / 512.0
    x0, y0, x1, y1 = face_box(landmarks, size)
    ref = match_colours(reference, restored, (x0, y0, x1, y1))
    flow = flow or cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    g = min(FLOW_SIZE, size)
    field_ = flow.calc(_grey(restored, g, 1.0), _grey(ref, g, 1.0), None)  # restored(x) ~ ref(x + flow(x))
    if g != size:
        field_ = cv2.resize(field_, (size, size), interpolation=cv2.INTER_LINEAR) * (size / g)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    warped = cv2.remap(ref, xs + field_[..., 0], ys + field_[..., 1], cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
    # low-frequency agreement, computed at a quarter of the side (it is smooth) and scaled back up
    q = 4
    small = max(size // q, 8)
    low = lambda a: cv2.GaussianBlur(cv2.resize(a, (small, small), interpolation=cv2.INTER_AREA),  # noqa: E731
                                     (0, 0), 8.0 * s / q)
    disagreement = cv2.GaussianBlur(np.abs(low(warped) - low(restored)).mean(axis=2), (0, 0), 4.0 * s / q)
    confidence = cv2.resize(np.exp(-(disagreement / tolerance) ** 2).astype(np.float32), (size, size),
                            interpolation=cv2.INTER_LINEAR)
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
    import cv2

    from .landmarks import crop_landmarks
    report = DetailReport()
    n = len(restored)
    if n == 0 or amount <= 0:
        return restored, report
    lms = crop_landmarks(restored) if landmarks is None else np.asarray(landmarks)
    ref = reference.crop.float().cpu()
    if ref.shape[-1] != restored.crop_size:
        ref = torch.nn.functional.interpolate(ref, size=(restored.crop_size,) * 2, mode="bicubic",
                                              antialias=True).clamp(0, 1)
    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
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
