"""5-point similarity alignment to the FFHQ template (as facexlib's FaceRestoreHelper)."""
from __future__ import annotations

import numpy as np
import torch

from .warp import invert_affine, mapped_box, warp

# FFHQ 5-point template for a 512x512 crop (eye L, eye R, nose, mouth L, mouth R), the
# values facexlib's FaceRestoreHelper uses, so crops match what CodeFormer/GFPGAN expect.
FFHQ_TEMPLATE_512 = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                              [201.26117, 371.41043], [313.08905, 371.15118]], dtype=np.float64)


def template(crop_size: int) -> np.ndarray:
    return FFHQ_TEMPLATE_512 * (crop_size / 512.0)


def estimate_affine(landmarks: np.ndarray, crop_size: int) -> np.ndarray:
    """2x3 similarity (rotation, uniform scale, shift) from image landmarks to the template."""
    import cv2
    src = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    dst = template(crop_size)
    m, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
    if m is None or not np.isfinite(m).all():  # degenerate points: least squares similarity
        m = umeyama_similarity(src, dst)
    return m.astype(np.float64)


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ sign @ vt
    var = (s ** 2).sum() / len(src)
    scale = (sig * np.diag(sign)).sum() / var if var > 0 else 1.0
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


def crop_one(image_hwc: torch.Tensor, affine: np.ndarray, crop_size: int, device: torch.device | str = "cpu",
             padding: str = "reflection") -> torch.Tensor:
    """Aligned crop [3,S,S] from one image [H,W,3]; reads only the region the crop covers."""
    height, width = image_hwc.shape[:2]
    inverse = invert_affine(affine)
    x0, y0, x1, y1 = mapped_box(inverse, crop_size, crop_size)
    margin = 4
    xa, ya = max(0, int(np.floor(x0)) - margin), max(0, int(np.floor(y0)) - margin)
    xb, yb = min(width, int(np.ceil(x1)) + margin + 1), min(height, int(np.ceil(y1)) + margin + 1)
    if xb <= xa or yb <= ya:  # crop lies outside the image
        return torch.zeros(3, crop_size, crop_size)
    roi = image_hwc[ya:yb, xa:xb].to(device, torch.float32).permute(2, 0, 1)[None]
    shifted = affine.copy()
    shifted[:, 2] += affine[:, 0] * xa + affine[:, 1] * ya  # ROI pixel -> crop pixel
    out = warp(roi, shifted, crop_size, crop_size, mode="bicubic", padding=padding)
    return out[0].clamp(0, 1).cpu()
