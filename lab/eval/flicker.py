"""Flicker of a face track: how much the aligned face changes from one frame to the next.

``track_flicker(frames, affines)`` crops every frame through its own alignment (source -> crop
affine, e.g. the true motion of a synthetic clip, or a tracker's smoothed affines) and returns the
mean absolute difference between consecutive crops inside the face region (0..1 units, x255 for
8-bit levels). Because the crops are aligned, a face that only moves scores close to 0; what is
left is what a viewer sees as flicker: noise, codes or colours that change from frame to frame.
Compare the value for the input, for per-frame restoration and for temporal restoration.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ...core.crop.align import crop_one, template
from ...core.paste.masks import landmark_masks, soften


def aligned_crops(frames: torch.Tensor, affines: np.ndarray, crop_size: int = 128) -> torch.Tensor:
    """[T,H,W,3] frames, [T,2,3] affines -> [T,3,S,S] aligned crops."""
    return torch.stack([crop_one(f, a, crop_size, padding="border") for f, a in zip(frames, affines)])


def face_region(crop_size: int) -> torch.Tensor:
    """[S,S] soft mask of the face inside the template framing (landmark outline, eroded)."""
    mask = landmark_masks([template(crop_size)], crop_size)
    unit = crop_size / 512.0
    return soften(mask, 8 * unit, 8 * unit)[0]


def crops_flicker(crops: torch.Tensor, mask: Optional[torch.Tensor] = None) -> float:
    """Mean |crop_t - crop_{t-1}| over the mask, averaged over t (crops [T,3,S,S] already aligned)."""
    if crops.shape[0] < 2:
        return 0.0
    if mask is None:
        mask = face_region(crops.shape[-1])
    diff = (crops[1:] - crops[:-1]).abs().mean(dim=1)  # [T-1,S,S]
    w = mask.to(diff)
    return float(((diff * w).sum(dim=(1, 2)) / w.sum().clamp(min=1e-6)).mean())


def track_flicker(frames: torch.Tensor, affines: np.ndarray, crop_size: int = 128) -> float:
    """Flicker of one face track in a clip: frames [T,H,W,3], affines [T,2,3] (frame -> crop pixels at crop_size)."""
    return crops_flicker(aligned_crops(frames, affines, crop_size), face_region(crop_size))


def face_psnr(a: torch.Tensor, b: torch.Tensor, affines: np.ndarray, crop_size: int = 128) -> np.ndarray:
    """Per-frame PSNR (dB) of the face region between two clips [T,H,W,3] (e.g. restored vs clean)."""
    ca, cb = aligned_crops(a, affines, crop_size), aligned_crops(b, affines, crop_size)
    w = face_region(crop_size)
    mse = (((ca - cb) ** 2).mean(dim=1) * w).sum(dim=(1, 2)) / w.sum()
    return (10 * torch.log10(1.0 / mse.clamp(min=1e-10))).numpy()


def frame_psnr(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per-frame PSNR (dB) of whole frames [T,H,W,3]."""
    mse = ((a.float() - b.float()) ** 2).flatten(1).mean(dim=1)
    return (10 * torch.log10(1.0 / mse.clamp(min=1e-10))).numpy()
