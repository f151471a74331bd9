"""The input's detail above a restorer's own resolution, carried into its output.

A restorer that works below the crop size (the compact 64² model) cannot produce detail finer than its
own band. Fidelity ``w`` then passes ``w`` × the input's band above that resolution through, so a sharp
input is not blurred; ``w = 0`` is the model alone. Restorers at the crop size are untouched.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)


def carry_detail(restored: torch.Tensor, lq_crops: torch.Tensor, model_size: int, fidelity: float) -> torch.Tensor:
    """restored [N,3,s,s] (model size) -> [N,3,S,S] at the crop size of ``lq_crops``."""
    size = lq_crops.shape[-1]
    restored = _resize(restored.float(), size)
    if model_size >= size or fidelity <= 0:
        return restored
    lq = lq_crops.to(restored.device, torch.float32)
    band = lq - _resize(_resize(lq, model_size), size)
    return (restored + float(fidelity) * band).clamp(0, 1)
