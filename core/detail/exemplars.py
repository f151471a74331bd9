"""Exemplar detail: fine detail (lids, lashes, irises) for eyes too blurred to hold any.

A heavily degraded face has lost detail that no input pixel can give back; the restorer leaves it smooth. In the
manner of DFDNet's component dictionaries, the restored face borrows that detail from the nearest of 20 bundled
exemplar faces. Each is a flow-registered composite of 8 or more different people (London Face Set *training*
identities, CC BY 4.0; ``lab/build_exemplars.py``), so no one's own face is stored or lent:

1. the nearest exemplar: normalised grey of the face box at 48², least squared distance;
2. it is colour-matched and registered onto the restored face by dense optical flow, with a confidence map that
   keeps only where both agree at low frequencies (core/detail/transfer.py, as reference detail);
3. inside the feathered face outline, in a band from just above the upper lids to the middle of the nose,
   the detail band (finer than σ 4 px at 512²) of the restored face is
   replaced by the exemplar's, scaled by the *detail deficit* against it mapped from ``DEFICIT_RANGE``: a face
   lacking a fifth of the exemplar's band energy starts to take it, one lacking 40 % takes it fully (heavy
   damage; part of medium); mild damage and sharp restorers' output are left alone (docs/lookup.md). A face
   lacking more than 65 % takes less again, none past 80 %: crisp eyes in a face blurred flat look pasted on.

The lookup step applies it with ``amount = exemplar_detail * quality``, fading out from fidelity 0.5 to 1: quality 0
stays the faithful clean-up and fidelity 1 returns the input. Video frames do not take it (the nearest exemplar
may change from frame to frame).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from ...errors import FaceRefineError, WeightsFormatError
from ..types import FaceCrops
from .transfer import (TOLERANCE, deficit_weight, detail_band, detail_deficit, face_box, match_colours, new_flow,
                       register_window)

WEIGHTS_NAME = "exemplars"
WINDOW = (96, 144, 416, 496)      # x0, y0, x1, y1 in a 512 crop: every face outline of the aligned crops
DESCRIPTOR_SIDE = 48              # the face box's grey at this side is the matching descriptor
DEFICIT_RANGE = (0.2, 0.4)        # deficit against the exemplar -> 0..1 (lab/eval/tune_exemplar_detail.py)
# ... and back to 0 over this range: eyes sharper than anything else in a face blurred flat look pasted on
DEFICIT_CEILING = (0.65, 0.8)
FEATHER = 8.0                     # Gaussian sigma of the face outline's edge (pixels of a 512 crop)
NOSE_FADE = (0.4, 0.8)            # the transfer fades out between these fractions of the eyes-to-nose-tip distance
BROW_TOP = 0.55                   # and fades in (over 0.3 of that distance) from this far above the eyes
MAX_EXEMPLARS = 4096
MAX_BLOB_BYTES = 64 << 20


def descriptor(crop: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """[S,S,3] 0..1 aligned crop, 5 landmarks in crop fractions -> the face box's grey at 48², zero mean, unit
    spread (flattened float32)."""
    import cv2
    x0, y0, x1, y1 = face_box(landmarks, crop.shape[0])
    grey = cv2.cvtColor(np.ascontiguousarray(crop[y0:y1, x0:x1], dtype=np.float32), cv2.COLOR_RGB2GRAY)
    grey = cv2.resize(grey, (DESCRIPTOR_SIDE, DESCRIPTOR_SIDE), interpolation=cv2.INTER_AREA)
    return ((grey - grey.mean()) / (grey.std() + 1e-4)).astype(np.float32).ravel()


def window_at(side: int) -> tuple[int, int, int, int]:
    """WINDOW for a crop of ``side`` pixels."""
    return tuple(int(round(v * side / 512.0)) for v in WINDOW)  # type: ignore[return-value]


@dataclass
class ExemplarSet:
    """The exemplar windows (JPEG bytes, decoded on use) and their descriptors."""

    blobs: np.ndarray                 # uint8 [B]: the JPEG files, one after another
    offsets: np.ndarray               # int64 [N+1]: exemplar i is blobs[offsets[i]:offsets[i+1]]
    descriptors: np.ndarray           # float32 [N, DESCRIPTOR_SIDE²]
    source: str = ""

    def __len__(self) -> int:
        return len(self.descriptors)

    def nearest(self, desc: np.ndarray) -> int:
        return int(np.argmin(((self.descriptors - desc[None]) ** 2).sum(axis=1)))

    def image(self, i: int) -> np.ndarray:
        """Exemplar ``i``'s window, [h,w,3] RGB float32 0..1 at 512 scale."""
        import cv2
        raw = self.blobs[int(self.offsets[i]):int(self.offsets[i + 1])]
        img = cv2.imdecode(np.ascontiguousarray(raw), cv2.IMREAD_COLOR)
        x0, y0, x1, y1 = WINDOW
        if img is None or img.shape != (y1 - y0, x1 - x0, 3):
            raise WeightsFormatError(f"exemplar {i} of {self.source or 'the exemplar file'} is not a "
                                     f"{x1 - x0}x{y1 - y0} colour JPEG: the file is corrupt; reinstall it")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"blobs": torch.from_numpy(self.blobs), "offsets": torch.from_numpy(self.offsets),
                "descriptors": torch.from_numpy(self.descriptors).half()}

    @classmethod
    def from_state_dict(cls, sd: dict, source: str = "") -> "ExemplarSet":
        """Checked: the keys, dtypes, sizes and finite descriptors (a wrong file gets a clear message)."""
        name = source or "exemplar file"
        need = {"blobs": (torch.uint8,), "offsets": (torch.int64,), "descriptors": (torch.float16, torch.float32)}
        missing = [k for k in need if k not in sd]
        if missing:
            raise WeightsFormatError(f"{name} is not a FaceRefine exemplar file: it lacks {missing}")
        for k, dtypes in need.items():
            if sd[k].dtype not in dtypes:
                raise WeightsFormatError(f"{name}: '{k}' is {sd[k].dtype}, expected one of {dtypes}")
        blobs, offsets, desc = sd["blobs"], sd["offsets"], sd["descriptors"]
        n = desc.shape[0] if desc.dim() == 2 else -1
        if (blobs.dim() != 1 or blobs.numel() > MAX_BLOB_BYTES or not 0 < n <= MAX_EXEMPLARS
                or desc.shape[1] != DESCRIPTOR_SIDE ** 2 or offsets.shape != (n + 1,)):
            raise WeightsFormatError(f"{name}: sizes do not fit (blobs {tuple(blobs.shape)}, offsets "
                                     f"{tuple(offsets.shape)}, descriptors {tuple(desc.shape)})")
        if (int(offsets[0]) != 0 or int(offsets[-1]) != blobs.numel() or bool((offsets[1:] <= offsets[:-1]).any())):
            raise WeightsFormatError(f"{name}: offsets do not cut the JPEG bytes into {n} pieces")
        if not bool(torch.isfinite(desc).all()):
            raise WeightsFormatError(f"{name}: descriptors hold NaN/inf: the file is corrupt")
        return cls(blobs.numpy(), offsets.numpy(), desc.float().numpy(), source)


def load_exemplars(path: Optional[str] = None) -> ExemplarSet:
    """The bundled exemplar file (or a given one), loaded once per path."""
    from ...models.cache import cached
    from ...models.locate import resolve
    file = resolve(path or WEIGHTS_NAME, "facerefine", download=False)
    return cached("exemplars", str(file), lambda: _read(file))


def _read(file) -> ExemplarSet:
    from ...models.loading import load_state_dict
    return ExemplarSet.from_state_dict(load_state_dict(file, unwrap=False, validate=False), file.name)


def luma(img: np.ndarray) -> np.ndarray:
    """Rec. 601 luma [h,w] of an RGB array."""
    return np.ascontiguousarray(img @ np.array([0.299, 0.587, 0.114], np.float32))


def transfer_mask(landmarks: np.ndarray, side: int) -> np.ndarray:
    """Where exemplar detail may go, at ``side``², float32 0..1: the face outline (no hair), feathered, in a
    band from just above the upper lids to the middle of the nose. Left out: nostrils and lips (on a face blurred
    flat, a composite's contours landed there as thin drawn lines, 3DSK faces) and brows and forehead (adult
    creases drawn on children's faces, UTKFace photos)."""
    import cv2

    from ..paste.masks import landmark_masks
    lm = np.asarray(landmarks, np.float64) * side
    hard = landmark_masks([lm], side, protect_hair=True)[0].numpy()
    sigma = FEATHER * side / 512.0
    hard = cv2.erode(hard, np.ones((3, 3), np.uint8), iterations=max(1, int(round(sigma))))
    eye_y, nose_y = lm[:2, 1].mean(), lm[2, 1]
    top, bottom = eye_y + NOSE_FADE[0] * (nose_y - eye_y), eye_y + NOSE_FADE[1] * (nose_y - eye_y)
    y = np.arange(side, dtype=np.float32)
    rows = np.clip((bottom - y) / max(bottom - top, 1.0), 0, 1)
    brow = eye_y - BROW_TOP * (nose_y - eye_y)  # brows and forehead: adult creases drawn on a child (UTKFace)
    rows *= np.clip((y - brow) / max(0.3 * (nose_y - eye_y), 1.0), 0, 1)
    return cv2.GaussianBlur(hard * rows[:, None], (0, 0), sigma)


def transfer_exemplar(restored: np.ndarray, exemplar: np.ndarray, landmarks: np.ndarray, amount: float = 1.0,
                      deficit_range=DEFICIT_RANGE, flow=None) -> tuple[np.ndarray, float, float, float]:
    """One face: restored [S,S,3] float32 0..1 (aligned crop), exemplar window [h,w,3] (512 scale), landmarks in
    crop fractions -> (output, weight, deficit, confidence in the face box)."""
    import cv2
    side = restored.shape[0]
    wx0, wy0, wx1, wy1 = window_at(side)
    win = np.ascontiguousarray(restored[wy0:wy1, wx0:wx1])
    if exemplar.shape[:2] != win.shape[:2]:
        exemplar = cv2.resize(exemplar, (win.shape[1], win.shape[0]), interpolation=cv2.INTER_AREA)
    x0, y0, x1, y1 = face_box(landmarks, side)
    box = (max(x0 - wx0, 0), max(y0 - wy0, 0), min(x1 - wx0, win.shape[1]), min(y1 - wy0, win.shape[0]))
    if box[2] - box[0] < 4 or box[3] - box[1] < 4:
        return restored, 0.0, float("nan"), 0.0
    warped, confidence = register_window(win, match_colours(exemplar, win, box), TOLERANCE, flow, side)
    # luma only: the exemplar lends structure (lids, lashes, iris rims), never its colours (iris, skin)
    band_ref, band_out = detail_band(luma(warped), crop_side=side), detail_band(luma(win), crop_side=side)
    deficit = detail_deficit(band_out, band_ref, box)
    weight = float(amount) * deficit_weight(deficit, deficit_range) * (1.0 - deficit_weight(deficit, DEFICIT_CEILING))
    if weight <= 0:
        return restored, 0.0, deficit, float(confidence[box[1]:box[3], box[0]:box[2]].mean())
    where = confidence * transfer_mask(landmarks, side)[wy0:wy1, wx0:wx1]
    out = restored.copy()
    out[wy0:wy1, wx0:wx1] = (win + (weight * where * (band_ref - band_out))[..., None]).clip(0, 1)
    return out, weight, deficit, float(confidence[box[1]:box[3], box[0]:box[2]].mean())


@dataclass
class ExemplarReport:
    amount: list = field(default_factory=list)       # transfer weight per face (0 = left alone)
    deficit: list = field(default_factory=list)      # detail deficit per face against its exemplar
    exemplar: list = field(default_factory=list)     # index of the exemplar used


@torch.inference_mode()
def apply_exemplar_detail(restored: FaceCrops, amount: float = 1.0, exemplars: Optional[ExemplarSet] = None,
                          deficit_range=DEFICIT_RANGE) -> tuple[FaceCrops, ExemplarReport]:
    """Every restored crop takes the nearest exemplar's fine detail where it lacks it (``amount`` 0..1)."""
    from ..crop.landmarks import crop_landmarks
    report = ExemplarReport()
    if len(restored) == 0 or amount <= 0:
        return restored, report
    if not 0.0 <= float(amount) <= 1.0:
        raise FaceRefineError(f"exemplar detail must be within 0..1, got {amount}")
    exemplars = exemplars or load_exemplars()
    lms = crop_landmarks(restored)
    flow = new_flow()
    crops = restored.crops.float().cpu()
    outs = []
    for i in range(len(restored)):
        face = np.ascontiguousarray(crops[i].permute(1, 2, 0).numpy(), dtype=np.float32)
        j = exemplars.nearest(descriptor(face, lms[i]))
        out, weight, deficit, _ = transfer_exemplar(face, exemplars.image(j), lms[i], amount, deficit_range, flow)
        report.amount.append(weight), report.deficit.append(deficit), report.exemplar.append(j)
        outs.append(torch.from_numpy(out).permute(2, 0, 1))
    if not any(report.amount):
        return restored, report
    result = torch.stack(outs).to(device=restored.crops.device, dtype=restored.crops.dtype)
    return restored.with_crops(result, "exemplar-detail"), report


__all__ = ["DEFICIT_CEILING", "DEFICIT_RANGE", "ExemplarReport", "ExemplarSet", "WINDOW", "apply_exemplar_detail",
           "descriptor", "load_exemplars", "transfer_exemplar"]
