"""face-iqa: this project's default face quality critic (successor of face-niqe).

A small, differentiable model on an aligned face crop (the crop step's 512² FFHQ framing; any size is
resized to 512²). It measures the damages a restorer makes and face-niqe missed, each as one number:

=====  ======================================================================  ==============================
 #     feature (Y = luminance, C = chroma; masks from the 5-point template)     reacts to
=====  ======================================================================  ==============================
 0-3   log energy of 4 luminance bands (Y-G1, G1-G2, G2-G4, G4-G8) in the face   blur, downscale, noise, ringing
 4-5   log energy of the two finest bands outside the face (hair, background)   (reference for 6-7)
 6-7   face minus outside of the two finest bands                               over-smoothing inside the face
 8     log (mean sqrt|Y-G1|)² in the face (robust noise level)                  noise
 9     kurtosis of the G1-G2 band in the face                                   ringing, mosaic, blur
 10-11 peak/mean of the spectrum of the column/row profile of |dY|              mosaic, JPEG blocks (any period)
 12    log chroma band energy (G2-G12 of Cb, Cr) in eyes and lips               colour blotches
 13    the same relative to the cheeks                                          colour blotches
 14    largest normalised autocorrelation of Y-G2 at 6..20 px lags in the face   ghosting, double edges
 15    log luminance contrast of the face (G8)                                  (exposure reference)
 16-18 log ratios of neighbouring face bands (0/1, 1/2, 2/3): the spectral slope    sharpening (too steep up) and
                                                                                blur (too steep down)
 19    overshoot past the local range of a smoother copy, relative to the band    ringing, halos (a blurred
       energy (natural edges are monotone steps; sharpening makes them ripple)  edge stays monotone)
=====  ======================================================================  ==============================

Every feature is standardised by clean training faces (z). The score is a linear function of
[z, |z|, relu(z)², relu(-z)²] (one-sided features 12-14 only use their upper side, so a grayscale face is not
punished for having no chroma). The weights are fitted on pairwise orderings (clean > degraded; milder >
stronger of the same kind; NL-means+unsharp > its LQ) of synthetic degradations of the *training*
London identities only (lab/train/fit_face_iqa.py). Raw = higher is better, about 10 for clean studio
faces and 0 for heavy damage (normalised = raw / 10).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .face_niqe import _blur, _gaussian_1d

WORK = 512
# FFHQ 5-point template at 512 (the crop step's framing): eye centres and mouth centre
_EYES = ((193.0, 240.0), (319.0, 240.0))
_MOUTH = (257.0, 371.0)
FEATURES = ("band0", "band1", "band2", "band3", "out_band0", "out_band1", "rel_band0", "rel_band1",
            "noise_level", "band1_kurtosis", "period_x", "period_y", "chroma_eyes_lips", "chroma_rel_skin",
            "ghost_autocorr", "contrast", "slope01", "slope12", "slope23",
            "overshoot")
ONE_SIDED = (12, 13, 14)
_RGB2YCC = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))


def _ellipse(cx: float, cy: float, ax: float, ay: float, size: int = WORK) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    d = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2
    return torch.sigmoid((1.0 - d) * 8.0)     # soft edge


def template_masks(size: int = WORK) -> dict[str, torch.Tensor]:
    """Soft masks [1,1,S,S] of the face, outside, eyes, lips and cheeks in the aligned 512² framing."""
    (lx, ly), (rx, ry) = _EYES
    mx, my = _MOUTH
    iod = rx - lx
    face = _ellipse((lx + rx) / 2, ly + 0.45 * (my - ly), 1.0 * iod, 1.3 * iod)
    outside = 1 - _ellipse((lx + rx) / 2, ly + 0.45 * (my - ly), 1.35 * iod, 1.7 * iod)
    eyes = (_ellipse(lx, ly, 0.3 * iod, 0.17 * iod) + _ellipse(rx, ry, 0.3 * iod, 0.17 * iod)).clamp(0, 1)
    lips = _ellipse(mx, my, 0.45 * iod, 0.22 * iod)
    cheeks = (_ellipse(lx - 0.05 * iod, ly + 0.6 * iod, 0.25 * iod, 0.25 * iod)
              + _ellipse(rx + 0.05 * iod, ry + 0.6 * iod, 0.25 * iod, 0.25 * iod)).clamp(0, 1)
    out = {"face": face, "outside": outside, "eyes_lips": (eyes + lips).clamp(0, 1), "cheeks": cheeks}
    if size != WORK:
        out = {k: F.interpolate(v[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
               for k, v in out.items()}
    return {k: v[None, None] for k, v in out.items()}


def _wmean(v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return (v * m).sum(dim=(-2, -1)) / m.sum(dim=(-2, -1)).clamp_min(1e-6)


def _g(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = 2 * int(round(3 * sigma)) + 1
    n, c, h, w = x.shape
    return _blur(x.reshape(n * c, 1, h, w), _gaussian_1d(k, sigma, x)).reshape(n, c, h, w)


def _period_peak(profile: torch.Tensor) -> torch.Tensor:
    """log(max / mean) of the power spectrum of a 1-D profile [N, L] above 1/32 cycles per pixel."""
    p = profile - profile.mean(-1, keepdim=True)
    spec = torch.fft.rfft(p, dim=-1).abs().pow(2)
    lo = max(1, p.shape[-1] // 32)
    spec = spec[:, lo:]
    return torch.log(spec.amax(-1) / spec.mean(-1).clamp_min(1e-12) + 1e-6)


def _ghost(band: torch.Tensor, mask: torch.Tensor, r_min: int = 6, r_max: int = 20) -> torch.Tensor:
    """Largest normalised autocorrelation of ``band * mask`` at lags with r_min <= |lag| <= r_max."""
    a = band * mask
    a = a - _wmean(a, mask)[..., None, None] * mask
    n, _, h, w = a.shape
    f = torch.fft.rfft2(a, s=(h + r_max, w + r_max))
    ac = torch.fft.irfft2(f.abs().pow(2), s=(h + r_max, w + r_max))
    r0 = ac[..., :1, :1].clamp_min(1e-12)
    rr = torch.arange(-r_max, r_max + 1)
    dy, dx = torch.meshgrid(rr, rr, indexing="ij")
    dist = (dy.float() ** 2 + dx.float() ** 2).sqrt()
    ring = (dist >= r_min) & (dist <= r_max) & ((dy > 0) | ((dy == 0) & (dx > 0)))  # half plane (symmetric)
    ys, xs = dy[ring] % (h + r_max), dx[ring] % (w + r_max)
    vals = ac[:, 0, ys, xs] / r0[:, 0, 0, :1]
    return vals.amax(-1)


def features(x: torch.Tensor, masks: Optional[dict[str, torch.Tensor]] = None) -> torch.Tensor:
    """x [N,3,H,W] RGB 0..1 -> [N, 20] raw features (differentiable; see the module table)."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected [N,3,H,W], got {tuple(x.shape)}")
    x = x.float().clamp(0, 1)
    if x.shape[-2:] != (WORK, WORK):
        x = F.interpolate(x, size=(WORK, WORK), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    x = x * 255.0
    x = (x - x.detach() + x.detach().round()) / 255.0      # like an 8-bit image; straight-through gradient
    if masks is None:
        masks = template_masks()
    masks = {k: v.to(x) for k, v in masks.items()}
    m = torch.tensor(_RGB2YCC, dtype=x.dtype, device=x.device)
    ycc = torch.einsum("ij,njhw->nihw", m, x)
    y, c = ycc[:, :1], ycc[:, 1:]
    face, outside = masks["face"], masks["outside"]
    half = {k: F.avg_pool2d(v, 2) for k, v in masks.items()}
    quarter = {k: F.avg_pool2d(v, 4) for k, v in masks.items()}
    # luminance bands: the two finest at 512², the coarser ones on 2x / 4x box-downsampled images
    g1, g2 = _g(y, 1.0), _g(y, 2.0)
    yh, yq = F.avg_pool2d(y, 2), F.avg_pool2d(y, 4)
    yq1, yq2 = _g(yq, 1.0), _g(yq, 2.0)
    bands = (y - g1, g1 - g2, _g(yh, 1.0) - _g(yh, 2.0), yq1 - yq2)
    band_masks = (face, face, half["face"], quarter["face"])
    eps = 1e-8
    e_face = [torch.log(_wmean(b * b, mk) + eps).flatten() for b, mk in zip(bands, band_masks)]
    e_out = [torch.log(_wmean(b * b, outside) + eps).flatten() for b in bands[:2]]
    rel = [e_face[0] - e_out[0], e_face[1] - e_out[1]]
    # robust noise level: a fractional moment weighs the many small (noise) values over the few edges, and
    # unlike a median its gradient reaches every pixel
    noise = 2.0 * torch.log(_wmean((bands[0].abs() + 1e-6).sqrt(), face) + 1e-5).flatten()
    b1 = bands[1]
    m2 = _wmean(b1 * b1, face)
    kurt = torch.log(_wmean(b1 ** 4, face) / (m2 * m2).clamp_min(1e-20) + eps).flatten()
    dxy = (y[..., :, 1:] - y[..., :, :-1]).abs()
    dyy = (y[..., 1:, :] - y[..., :-1, :]).abs()
    rows = slice(WORK // 4, 3 * WORK // 4)
    px = _period_peak(dxy[:, 0, rows, :].mean(1))
    py = _period_peak(dyy[:, 0, :, rows].mean(2))
    ch = F.avg_pool2d(c, 2)
    cb = _g(ch, 1.0) - _g(ch, 6.0)
    ce = (cb * cb).sum(1, keepdim=True)
    chroma = torch.log(_wmean(ce, half["eyes_lips"]) + 1e-7).flatten()
    chroma_rel = chroma - torch.log(_wmean(ce, half["cheeks"]) + 1e-7).flatten()
    ghost = _ghost(y - g2, face)
    fq = quarter["face"]
    contrast = torch.log(_wmean((yq2 - _wmean(yq2, fq)[..., None, None]) ** 2, fq) + eps).flatten()
    slopes = [e_face[0] - e_face[1], e_face[1] - e_face[2], e_face[2] - e_face[3]]
    g3 = _g(y, 3.0)
    hi, lo = F.max_pool2d(g3, 13, 1, 6), -F.max_pool2d(-g3, 13, 1, 6)
    over = F.relu(g1 - hi) + F.relu(lo - g1)
    overshoot = (torch.log(_wmean(over * over, face) + 1e-10)
                 - torch.log(_wmean((g1 - g3) ** 2, face) + 1e-10)).flatten()
    return torch.stack(e_face + e_out + rel + [noise, kurt, px, py, chroma, chroma_rel, ghost, contrast] + slopes
                       + [overshoot], dim=-1)


def expand(z: torch.Tensor) -> torch.Tensor:
    """[N, F] standardised features -> [N, 4F] model inputs [z, |z|, relu(z)², relu(-z)²] (one-sided: upper
    side only). |z| lets a feature peak at the clean faces' mean (e.g. the spectral slope: blur and
    sharpening both move away from it), the squares let heavy damage weigh more."""
    one = torch.zeros(z.shape[-1], dtype=torch.bool, device=z.device)
    one[list(ONE_SIDED)] = True
    lin = torch.where(one, F.relu(z), z)
    absolute = torch.where(one, F.relu(z), z.abs())
    up = F.relu(z) ** 2
    down = torch.where(one, torch.zeros_like(z), F.relu(-z) ** 2)
    return torch.cat([lin, absolute, up, down], dim=-1)


class FaceIQA(torch.nn.Module):
    """x [N,3,H,W] RGB 0..1 (aligned face crops) -> raw face-iqa [N], higher = better, differentiable."""

    lower_better = False

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        nf = len(FEATURES)
        if mean.shape != (nf,) or std.shape != (nf,) or weight.shape != (4 * nf,):
            raise ValueError(f"face-iqa parameters have shapes {tuple(mean.shape)}/{tuple(std.shape)}/"
                             f"{tuple(weight.shape)}, expected ({nf},)/({nf},)/({4 * nf},)")
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())
        self.register_buffer("weight", weight.float())
        self.register_buffer("bias", bias.float().reshape(()))
        masks = template_masks()
        for k, v in masks.items():
            self.register_buffer(f"mask_{k}", v, persistent=False)

    def masks(self) -> dict[str, torch.Tensor]:
        return {k[5:]: v for k, v in self.named_buffers() if k.startswith("mask_")}

    def standardized(self, x: torch.Tensor) -> torch.Tensor:
        return (features(x.to(self.mean.device), self.masks()) - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return expand(self.standardized(x.float())) @ self.weight + self.bias

    @staticmethod
    def from_state_dict(sd: dict[str, torch.Tensor]) -> "FaceIQA":
        missing = [k for k in ("mean", "std", "weight", "bias") if k not in sd]
        if missing:
            from ...errors import WrongArchitectureError
            raise WrongArchitectureError(f"not a face-iqa parameter file: missing {missing}")
        return FaceIQA(sd["mean"], sd["std"], sd["weight"], sd["bias"])


WEIGHTS_NAME = "face-iqa"


def load_face_iqa(path: Optional[str] = None) -> FaceIQA:
    """The shipped (or a given) face-iqa parameter file as a torch module."""
    from ...models.loading import load_state_dict
    from ...models.locate import resolve
    file = resolve(path or WEIGHTS_NAME, "facerefine", download=False)
    return FaceIQA.from_state_dict(load_state_dict(file, unwrap=False))


__all__ = ["FEATURES", "FaceIQA", "expand", "features", "load_face_iqa", "template_masks"]
