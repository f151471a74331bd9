"""Affine resampling in torch (CPU or GPU) with anti-aliasing when shrinking.

Convention (as OpenCV): pixel centres sit at integer coordinates; a 2x3 matrix maps
homogeneous source pixel coordinates to destination pixel coordinates.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def to3x3(m: np.ndarray) -> np.ndarray:
    return np.vstack([np.asarray(m, dtype=np.float64).reshape(2, 3), [0.0, 0.0, 1.0]])


def invert_affine(m: np.ndarray) -> np.ndarray:
    return np.linalg.inv(to3x3(m))[:2]


def compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a after b (both 2x3)."""
    return (to3x3(a) @ to3x3(b))[:2]


def scale_matrix(sx: float, sy: float) -> np.ndarray:
    """Resize map for pixel-centre coordinates: x' = (x + 0.5) * sx - 0.5."""
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]])


def linear_scale(m: np.ndarray) -> float:
    """Geometric-mean scale factor of an affine map."""
    return math.sqrt(abs(float(np.linalg.det(np.asarray(m, dtype=np.float64)[:2, :2])))) or 1e-12


def mapped_box(m: np.ndarray, width: int, height: int) -> tuple[float, float, float, float]:
    """Bounding box (x0,y0,x1,y1) of a width x height rectangle's corners after m."""
    corners = np.array([[-0.5, -0.5, 1], [width - 0.5, -0.5, 1], [-0.5, height - 0.5, 1],
                        [width - 0.5, height - 0.5, 1]])
    pts = corners @ np.asarray(m, dtype=np.float64).T
    return pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()


def warp(src: torch.Tensor, src_to_dst: np.ndarray, out_h: int, out_w: int, mode: str = "bicubic",
         padding: str = "zeros", antialias: bool = True) -> torch.Tensor:
    """Resample src [N,C,h,w] into an out_h x out_w grid through the 2x3 map src->dst.

    When the map shrinks by more than 1.5x, src is first reduced with an antialiased
    resize so that the grid sampler does not alias.
    """
    m = np.asarray(src_to_dst, dtype=np.float64)
    h, w = src.shape[-2:]
    s = linear_scale(m)
    if antialias and s < 1 / 1.5 and min(h, w) > 2:
        new_h, new_w = max(2, round(h * s)), max(2, round(w * s))
        src = F.interpolate(src, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
        m = compose(m, np.linalg.inv(to3x3(scale_matrix(new_w / w, new_h / h)))[:2])
        h, w = new_h, new_w
    out_from_norm = np.array([[out_w / 2, 0.0, out_w / 2 - 0.5], [0.0, out_h / 2, out_h / 2 - 0.5]])
    norm_from_src = np.array([[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0]])
    theta = compose(norm_from_src, compose(invert_affine(m), out_from_norm))  # normalised dst -> src
    theta = torch.as_tensor(theta, dtype=src.dtype, device=src.device)[None].expand(src.shape[0], 2, 3)
    grid = F.affine_grid(theta, [src.shape[0], src.shape[1], out_h, out_w], align_corners=False)
    return F.grid_sample(src, grid, mode=mode, padding_mode=padding, align_corners=False)
