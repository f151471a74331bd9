"""Colour correction of a restored crop towards the original face (inside the face mask)."""
from __future__ import annotations

import torch
import torch.nn.functional as F



def masked_stats(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    total = w.sum(dim=(-2, -1), keepdim=True).clamp(min=1e-6)
    mean = (x * w).sum(dim=(-2, -1), keepdim=True) / total
    var = ((x - mean) ** 2 * w).sum(dim=(-2, -1), keepdim=True) / total
    return mean, var.clamp(min=1e-8).sqrt()


def lab_transfer(restored: torch.Tensor, original: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Match per-channel mean and std in CIE-LAB (Reinhard transfer). Tensors [N,3,S,S], mask [N,1,S,S]."""
    from kornia.color import lab_to_rgb, rgb_to_lab
    # statistics of 4x pooled copies: colour and shading contrast, not the fine detail a restorer adds
    pooled_mask = F.avg_pool2d(mask, 4)
    mean_r, std_r = masked_stats(rgb_to_lab(F.avg_pool2d(restored.clamp(0, 1), 4)), pooled_mask)
    mean_o, std_o = masked_stats(rgb_to_lab(F.avg_pool2d(original.clamp(0, 1), 4)), pooled_mask)
    lab_r = rgb_to_lab(restored.clamp(0, 1))
    out = (lab_r - mean_r) * (std_o / std_r).clamp(0.5, 2.0) + mean_o
    return lab_to_rgb(out, clip=True)


def smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian low-pass; large sigmas run on a pooled copy (same result up to interpolation)."""
    from kornia.filters import gaussian_blur2d
    size = x.shape[-2:]
    factor = max(1, int(sigma // 2))
    small = F.avg_pool2d(x, factor) if factor > 1 else x
    s = sigma / factor
    k = int(s * 3) * 2 + 1
    small = gaussian_blur2d(small, (k, k), (s, s), border_type="reflect")
    return F.interpolate(small, size=size, mode="bilinear", align_corners=False) if factor > 1 else small


def lowfreq_transfer(restored: torch.Tensor, original: torch.Tensor, mask: torch.Tensor,
                     sigma: float | None = None) -> torch.Tensor:
    """Keep the restored details, take the low frequencies (colour, shading) from the original."""
    size = restored.shape[-1]
    sigma = sigma or size / 64.0
    w = (mask > 0.01).float()
    # mask-normalised blur, so background outside the face does not bleed in
    norm = smooth(w, sigma).clamp(min=1e-4)
    low_r = smooth(restored * w, sigma) / norm
    low_o = smooth(original * w, sigma) / norm
    return (restored - low_r + low_o).clamp(0, 1)


def color_correct(restored: torch.Tensor, original: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "none":
        return restored
    if mode == "lab":
        return lab_transfer(restored, original, mask)
    if mode == "lowfreq":
        return lowfreq_transfer(restored, original, mask)
    raise ValueError(f"colour correction must be one of {COLOR_MODES}, got '{mode}'")
