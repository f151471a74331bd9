"""Grayscale stays grayscale: detect black-and-white inputs and keep only the restored luminance.

A restorer trained on colour faces tints a black-and-white photo (brown or blue eyes, coloured cheeks).
``restore_images`` calls ``keep_grayscale`` after paste-back: every image whose input channels are equal
within ``GRAY_TOLERANCE`` comes back as the restored luminance (ITU-R 601 luma) in all three channels, so
its channels are exactly equal. ``allow_color=True`` (control ``allow_color``, CLI ``--allow-color``)
keeps the restorer's colours.
"""
from __future__ import annotations

import torch

GRAY_TOLERANCE = 2.0 / 255.0          # max |R-G|, |G-B|, |R-B| of a grayscale photo (JPEG chroma noise)
_LUMA = (0.299, 0.587, 0.114)


def is_grayscale(images: torch.Tensor, tolerance: float = GRAY_TOLERANCE) -> torch.Tensor:
    """Bool [B]: images [B,H,W,C] (or [H,W,C]) 0..1 whose colour channels agree within ``tolerance``.

    Single-channel images are grayscale. The 99.9th percentile of the channel spread is used, so a few
    stray coloured pixels (a JPEG artefact, a watermark dot) do not make a photo "colour"."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.shape[-1] < 3:
        return torch.ones(images.shape[0], dtype=torch.bool, device=images.device)
    rgb = images[..., :3].float()
    spread = (rgb.amax(-1) - rgb.amin(-1)).flatten(1)
    if spread.shape[1] > 1_000_000:   # quantile has a size limit; a strided subset is plenty
        spread = spread[:, :: spread.shape[1] // 1_000_000 + 1]
    return torch.quantile(spread, 0.999, dim=1) <= tolerance


def luminance_only(images: torch.Tensor) -> torch.Tensor:
    """[B,H,W,C] -> the same shape with R=G=B=luma (alpha and extra channels untouched)."""
    w = torch.tensor(_LUMA, dtype=images.dtype, device=images.device)
    y = (images[..., :3] * w).sum(-1, keepdim=True).clamp(0, 1)
    return torch.cat([y.expand(*y.shape[:-1], 3), images[..., 3:]], dim=-1)


def keep_grayscale(inputs: torch.Tensor, outputs: torch.Tensor, allow_color: bool = False) -> torch.Tensor:
    """``outputs`` with every image whose input was grayscale reduced to its luminance (unless ``allow_color``)."""
    if allow_color or outputs.shape[-1] < 3:
        return outputs
    gray = is_grayscale(inputs).to(outputs.device)
    if not bool(gray.any()):
        return outputs
    return torch.where(gray.view(-1, *([1] * (outputs.ndim - 1))), luminance_only(outputs), outputs)


__all__ = ["GRAY_TOLERANCE", "is_grayscale", "keep_grayscale", "luminance_only"]
