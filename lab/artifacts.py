"""Restorer-style artefacts for critic tests: mosaic, over-smoothing, colour blotches, ringing, ghosting, GAN texture.

Companions of lab/degrade.py (which holds the classic blur/downscale/noise/JPEG chain). Every function
takes faces x [N,3,H,W] RGB 0..1 and returns a new tensor; region-based artefacts take soft masks
[N,1,H,W] built by ``face_regions`` from landmarks (London WebMorph points or the crop step's 5 points).

    mosaic(x, block)              block-average pixelation (the fidelity-0 "8 px mosaic" look)
    oversmooth(x, mask, level)    edge-preserving bilateral smoothing inside the face only (waxy skin)
    color_blotches(x, mask, amp)  random low-frequency chroma patches (eyes, lips)
    ringing(x, amount)            over-sharpening: unsharp mask halo / ringing
    ghosting(x, alpha, shift)     a faint shifted copy (double edges)
    gan_texture(x, amount, seed)  hallucinated high-frequency texture on skin, hair and background (worms + checkerboard)
    nlm_unsharp(x)                the OpenCV NL-means + unsharp-mask baseline restorer
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

# London WebMorph (FRL 189-point template): 0/1 pupils, 2..27 eyes and lids, 87..108 lips
LONDON_EYES = tuple(range(0, 28))
LONDON_LIPS = tuple(range(87, 109))


def _gauss(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    from kornia.filters import gaussian_blur2d
    k = 2 * math.ceil(3 * sigma) + 1
    return gaussian_blur2d(mask, (k, k), (sigma, sigma), border_type="replicate")


def _ellipse(h: int, w: int, cx: float, cy: float, ax: float, ay: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    return ((((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2) <= 1.0).float()


def face_regions(eyes: Sequence[tuple[float, float]], mouth: tuple[float, float], size: int,
                 eye_points: Optional[np.ndarray] = None, lip_points: Optional[np.ndarray] = None
                 ) -> dict[str, torch.Tensor]:
    """Soft masks [1,S,S] 'face', 'eyes', 'lips' of one face from its eye centres and mouth centre (pixels).

    With dense ``eye_points``/``lip_points`` (London landmarks) the eye/lip masks follow their convex
    hulls; otherwise ellipses sized by the inter-ocular distance.
    """
    import cv2
    (lx, ly), (rx, ry) = eyes
    iod = max(1.0, math.hypot(rx - lx, ry - ly))
    cx, cy = (lx + rx) / 2, (ly + ry) / 2
    mx, my = mouth
    face = _ellipse(size, size, cx, cy + 0.45 * (my - cy) / 1.05, 1.0 * iod, 1.25 * iod)

    def hull(points: np.ndarray, grow: float) -> torch.Tensor:
        m = np.zeros((size, size), np.uint8)
        pts = np.asarray(points, np.float32)
        c = pts.mean(0, keepdims=True)
        pts = (c + (pts - c) * grow).round().astype(np.int32)
        cv2.fillConvexPoly(m, cv2.convexHull(pts), 1)
        return torch.from_numpy(m.astype(np.float32))

    if eye_points is not None and len(eye_points) >= 6:
        left = eye_points[eye_points[:, 0] < cx]
        right = eye_points[eye_points[:, 0] >= cx]
        eye_mask = torch.clamp(hull(left, 1.25) + hull(right, 1.25), 0, 1)
    else:
        eye_mask = torch.clamp(_ellipse(size, size, lx, ly, 0.28 * iod, 0.16 * iod)
                               + _ellipse(size, size, rx, ry, 0.28 * iod, 0.16 * iod), 0, 1)
    if lip_points is not None and len(lip_points) >= 6:
        lip_mask = hull(lip_points, 1.1)
    else:
        lip_mask = _ellipse(size, size, mx, my, 0.42 * iod, 0.2 * iod)
    soft = max(1.0, size / 256)
    return {"face": _gauss(face[None, None], 6 * soft)[0],
            "eyes": _gauss(eye_mask[None, None], 2 * soft)[0],
            "lips": _gauss(lip_mask[None, None], 2 * soft)[0]}


def mosaic(x: torch.Tensor, block: float) -> torch.Tensor:
    """Pixelation: average over block×block cells (grid at the top-left), nearest back to size."""
    b = max(1, int(round(float(block))))
    if b == 1:
        return x.clone()
    h, w = x.shape[-2:]
    hp, wp = math.ceil(h / b) * b, math.ceil(w / b) * b
    xp = F.pad(x, (0, wp - w, 0, hp - h), mode="replicate")
    cells = F.avg_pool2d(xp, b)
    return F.interpolate(cells, scale_factor=b, mode="nearest")[..., :h, :w].contiguous()


def oversmooth(x: torch.Tensor, mask: torch.Tensor, level: float) -> torch.Tensor:
    """Bilateral smoothing (OpenCV) of strength ``level`` (0..1+) blended in by ``mask`` [N,1,H,W] (the face only)."""
    import cv2
    if level <= 0:
        return x.clone()
    scale = x.shape[-1] / 512
    sigma_space = (1.5 + 6.5 * level) * scale
    sigma_color = 0.04 + 0.16 * level
    d = 2 * math.ceil(1.5 * sigma_space) + 1
    out = []
    for img in x:
        a = np.ascontiguousarray(img.detach().permute(1, 2, 0).cpu().numpy().astype(np.float32))
        for _ in range(1 + int(round(2 * level))):
            a = cv2.bilateralFilter(a, d, sigma_color, sigma_space)
        out.append(torch.from_numpy(a).permute(2, 0, 1))
    y = torch.stack(out).to(x)
    return (x * (1 - mask) + y * mask).clamp(0, 1)


_RGB2YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def color_blotches(x: torch.Tensor, mask: torch.Tensor, amplitude: float, seed: int = 0,
                   scale_px: float = 6.0) -> torch.Tensor:
    """Add random low-frequency chroma patches of rms ``amplitude`` (0..1 chroma units) where ``mask`` is on."""
    if amplitude <= 0:
        return x.clone()
    n, _, h, w = x.shape
    gen = torch.Generator().manual_seed(seed)
    s = scale_px * x.shape[-1] / 512
    field = torch.randn(n, 2, h, w, generator=gen)
    field = _gauss(field, s)
    field = field / field.flatten(1).std(1).clamp_min(1e-6).view(n, 1, 1, 1)   # unit rms
    m = _RGB2YCC.to(x)
    ycc = torch.einsum("ij,njhw->nihw", m, x)
    ycc[:, 1:] = ycc[:, 1:] + amplitude * field.to(x) * mask
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(m), ycc).clamp(0, 1)


def ringing(x: torch.Tensor, amount: float, sigma: float = 2.0) -> torch.Tensor:
    """Over-sharpening: x + amount * (x - blur_sigma(x)), clipped (halos and ringing at edges)."""
    if amount <= 0:
        return x.clone()
    s = sigma * x.shape[-1] / 512
    return (x + amount * (x - _gauss(x, s))).clamp(0, 1)


def ghosting(x: torch.Tensor, alpha: float, shift: tuple[int, int] = (0, 10)) -> torch.Tensor:
    """(1-alpha) x + alpha * x shifted by ``shift`` (dy, dx) pixels at 512² (scaled to x's size)."""
    if alpha <= 0:
        return x.clone()
    s = x.shape[-1] / 512
    dy, dx = int(round(shift[0] * s)), int(round(shift[1] * s))
    pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))
    xp = F.pad(x, pad, mode="replicate")
    h, w = x.shape[-2:]
    # shifted[y, x] = x[y - dy, x - dx] (replicated at the border)
    shifted = xp[..., pad[2] - dy:pad[2] - dy + h, pad[0] - dx:pad[0] - dx + w]
    return ((1 - alpha) * x + alpha * shifted).clamp(0, 1)


def _unit_rms(t: torch.Tensor) -> torch.Tensor:
    return t / t.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-8)


def _ring_noise(n: int, h: int, w: int, period: float, gen: torch.Generator) -> torch.Tensor:
    """White noise [N,1,H,W] kept in a narrow ring of spatial frequency around 1/``period``: a maze of short
    worm-like strokes of width ~period/2 and every orientation."""
    white = torch.randn(n, 1, h, w, generator=gen)
    fy = torch.fft.fftfreq(h).view(h, 1)
    fx = torch.fft.rfftfreq(w).view(1, -1)
    f = (fy * fy + fx * fx).sqrt()
    f0 = 1.0 / period
    ring = torch.exp(-0.5 * ((f - f0) / (0.18 * f0)) ** 2)
    return torch.fft.irfft2(torch.fft.rfft2(white) * ring, s=(h, w))


def _checkerboard(n: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """Noise at 1/4 size brought up by two stride-2 transposed convolutions with uneven kernel overlap and a
    leaky ReLU between them, as in a GAN generator's upsampling path: a grid-locked checkerboard [N,1,H,W]."""
    k1 = torch.tensor([0.25, 1.0, 0.25])
    kernel = (k1[:, None] * k1[None, :]).view(1, 1, 3, 3)
    z = torch.randn(n, 1, math.ceil(h / 4), math.ceil(w / 4), generator=gen)
    for _ in range(2):
        z = F.conv_transpose2d(z, kernel, stride=2, padding=1, output_padding=1)
        z = F.leaky_relu(z, 0.2)
    return z[..., :h, :w]


def gan_texture(x: torch.Tensor, amount: float, seed: int = 0, period: float = 4.0,
                checker: float = 0.35) -> torch.Tensor:
    """Add GAN-like hallucinated texture of rms ``amount`` (0..1 luminance units) to the whole image: skin,
    hair and background alike, as a detail-seeking generator paints it where the input has none.

    The texture is a mix of crisp worm-like strokes (narrow-band noise at ``period`` px at 512², sharpened by
    a tanh) and, with weight ``checker``, the checkerboard of a transposed-convolution upsampling of noise;
    both are high-passed (no change to the face's shading) and added equally to R, G and B. Deterministic
    for a ``seed``; ``amount`` 0 returns the input."""
    if amount <= 0:
        return x.clone()
    n, _, h, w = x.shape
    s = w / 512
    gen = torch.Generator().manual_seed(int(seed))
    worms = _unit_rms(_ring_noise(n, h, w, max(2.0, period * s), gen))
    worms = torch.tanh(1.5 * worms)
    grid = _checkerboard(n, h, w, gen)
    t = (1 - checker) * _unit_rms(worms) + checker * _unit_rms(grid - _gauss(grid, 2.0 * s))
    t = t - _gauss(t, max(1.0, period * s))
    t = _unit_rms(t).to(x)
    return (x + amount * t).clamp(0, 1)


def nlm_unsharp(x: torch.Tensor, h: float = 10.0, amount: float = 0.8, sigma: float = 2.0) -> torch.Tensor:
    """Baseline restorer: OpenCV fastNlMeansDenoisingColored (h=hColor=``h``) then an unsharp mask."""
    import cv2
    out = []
    for img in x:
        u8 = (img.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        den = cv2.fastNlMeansDenoisingColored(np.ascontiguousarray(u8[..., ::-1]), None, h, h, 7, 21)[..., ::-1]
        out.append(torch.from_numpy(den.copy()).permute(2, 0, 1).float() / 255)
    y = torch.stack(out).to(x)
    s = sigma * x.shape[-1] / 512
    return (y + amount * (y - _gauss(y, s))).clamp(0, 1)


__all__ = ["face_regions", "mosaic", "oversmooth", "color_blotches", "ringing", "ghosting", "gan_texture",
           "nlm_unsharp",
           "LONDON_EYES", "LONDON_LIPS"]
