"""face-niqe: a NIQE-style face quality model fitted by this project.

NIQE (Mittal et al. 2012) describes an image by natural-scene-statistics (NSS)
features of its mean-subtracted contrast-normalised (MSCN) luminance, pooled in
blocks at two scales, and measures the distance of their Gaussian fit to a
Gaussian fitted on pristine images. Here the pristine model is fitted on clean
studio face crops (lab/train/fit_face_niqe.py) and the features are computed in
torch, differentiably (the AGGD shape is interpolated in its moment-ratio table
instead of picked by argmin), so the score can steer restoration.

Building blocks come from pyiqa (Y channel, MATLAB-style Gaussian window and
bicubic resize, nanmean/nancov); the block pooling is vectorised.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn.functional as F

# pair-product orientations: horizontal, vertical, main and secondary diagonal
_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))


@dataclass(frozen=True)
class FaceNiqeConfig:
    """Feature settings; stored in the weights file so a model is self-describing."""

    work_size: int = 512        # inputs are resized to work_size² (the default crop size)
    block_size: int = 32        # block side at the first scale (halved at each further scale)
    scales: int = 2
    mscn_window: int = 7
    mscn_sigma: float = 7.0 / 6.0
    mscn_c: float = 1.0         # stabiliser of the MSCN division, in 0..255 units

    @property
    def feature_dim(self) -> int:
        return 18 * self.scales

    def to_tensor_dict(self) -> dict[str, torch.Tensor]:
        return {f"config.{k}": torch.tensor(float(v), dtype=torch.float64) for k, v in asdict(self).items()}

    @staticmethod
    def from_tensor_dict(sd: dict[str, torch.Tensor]) -> "FaceNiqeConfig":
        kw = {}
        for f in FaceNiqeConfig.__dataclass_fields__.values():
            key = f"config.{f.name}"
            if key in sd:
                value = float(sd[key])
                kw[f.name] = int(round(value)) if f.type in ("int", int) else value
        return FaceNiqeConfig(**kw)


# ---------------------------------------------------------------- AGGD fit
_GAMMA_TABLE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _gamma_table(device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """AGGD shape grid and its (monotonic increasing) moment ratio r(a) = G(2/a)^2 / (G(1/a) G(3/a))."""
    key = (str(device), dtype)
    if key not in _GAMMA_TABLE:
        gam = torch.arange(0.2, 10.0 + 1e-3, 1e-3, dtype=torch.float64)
        ratio = (2 * torch.lgamma(2.0 / gam) - torch.lgamma(1.0 / gam) - torch.lgamma(3.0 / gam)).exp()
        _GAMMA_TABLE[key] = (gam.to(device, dtype), ratio.to(device, dtype))
    return _GAMMA_TABLE[key]


def aggd_params(x: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric generalised Gaussian fit of each row of x [M, K]: (alpha, beta_left, beta_right)."""
    gam, ratio = _gamma_table(x.device, x.dtype)
    left, right = (x < 0).to(x.dtype), (x > 0).to(x.dtype)
    left_std = ((x * left).pow(2).sum(-1) / left.sum(-1).clamp_min(1) + eps).sqrt()
    right_std = ((x * right).pow(2).sum(-1) / right.sum(-1).clamp_min(1) + eps).sqrt()
    gamma_hat = left_std / right_std
    r_hat = x.abs().mean(-1).pow(2) / (x.pow(2).mean(-1) + eps)
    r_norm = r_hat * (gamma_hat.pow(3) + 1) * (gamma_hat + 1) / (gamma_hat.pow(2) + 1).pow(2)
    r_norm = r_norm.clamp(float(ratio[0]), float(ratio[-1]))
    # linear interpolation in the monotonic table (differentiable in r_norm)
    hi = torch.searchsorted(ratio, r_norm.detach().contiguous()).clamp(1, len(ratio) - 1)
    lo = hi - 1
    t = (r_norm - ratio[lo]) / (ratio[hi] - ratio[lo])
    alpha = gam[lo] + t * (gam[hi] - gam[lo])
    scale = (torch.lgamma(1 / alpha) - torch.lgamma(3 / alpha)).exp().sqrt()
    return alpha, left_std * scale, right_std * scale


# ---------------------------------------------------------------- features
def _blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """[N,1,H,W] -> [N, nblocks, block*block] (non-overlapping, row-major)."""
    n, _, h, w = x.shape
    t = x.reshape(n, h // block, block, w // block, block).permute(0, 1, 3, 2, 4)
    return t.reshape(n, -1, block * block)


def _gaussian_1d(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-r * r / (2 * sigma * sigma))
    return (g / g.sum()).to(like)


def _blur(y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian with replicate padding (same result as a 2-D fspecial window)."""
    k = g.numel()
    p0, p1 = (k - 1) // 2, k // 2
    y = F.pad(y, (p0, p1, p0, p1), mode="replicate")
    y = F.conv2d(y, g.view(1, 1, 1, k))
    return F.conv2d(y, g.view(1, 1, k, 1))


def mscn(y: torch.Tensor, cfg: FaceNiqeConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """MSCN coefficients and local sigma of luminance y [N,1,H,W] in 0..255."""
    g = _gaussian_1d(cfg.mscn_window, cfg.mscn_sigma, y)
    mu = _blur(y, g)
    var = _blur(y * y, g) - mu * mu
    sigma = (var.abs() + 1e-12).sqrt()
    return (y - mu) / (sigma + cfg.mscn_c), sigma


def block_features(norm: torch.Tensor, block: int) -> torch.Tensor:
    """18 NSS features per block of an MSCN map [N,1,H,W] -> [N, nblocks, 18]."""
    n = norm.shape[0]
    flat = _blocks(norm, block)
    nb = flat.shape[1]
    alpha, bl, br = aggd_params(flat.reshape(n * nb, -1))
    feats = [alpha, (bl + br) / 2]
    for dy, dx in _SHIFTS:
        prod = norm * torch.roll(norm, shifts=(dy, dx), dims=(2, 3))
        a, pl, pr = aggd_params(_blocks(prod, block).reshape(n * nb, -1))
        mean = (pr - pl) * (torch.lgamma(2 / a) - torch.lgamma(1 / a)).exp()
        feats += [a, mean, pl, pr]
    return torch.stack(feats, dim=-1).reshape(n, nb, 18)


def luminance(x: torch.Tensor, work_size: Optional[int]) -> torch.Tensor:
    """RGB [N,3,H,W] 0..1 -> Y [N,1,S,S] 0..255 float32 (rounded like an 8-bit image, straight-through)."""
    from pyiqa.utils.color_util import to_y_channel
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected [N,3,H,W] or [N,1,H,W], got {tuple(x.shape)}")
    x = x.float().clamp(0, 1)
    y = to_y_channel(x, 1.0, "yiq") if x.shape[1] == 3 else x
    y = y.to(torch.float32)
    if work_size and (y.shape[-1] != work_size or y.shape[-2] != work_size):
        y = F.interpolate(y, size=(work_size, work_size), mode="bicubic", align_corners=False, antialias=True)
    y = y * 255.0
    return y - y.detach() + y.detach().round()


def nss_features(x: torch.Tensor, cfg: FaceNiqeConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Block features [N, nblocks, 18*scales] and block sharpness [N, nblocks] (mean local sigma)."""
    from pyiqa.matlab_utils import imresize
    y = luminance(x, cfg.work_size)
    cells = 2 ** (cfg.scales - 1)
    b = cfg.block_size
    if b % cells:
        raise ValueError(f"block_size {b} must be divisible by {cells}")
    h = y.shape[-2] // b * b
    w = y.shape[-1] // b * b
    if h == 0 or w == 0:
        raise ValueError(f"image {tuple(x.shape[-2:])} smaller than one {b}px block")
    y = y[..., :h, :w]
    feats, sharpness = [], None
    for s in range(cfg.scales):
        norm, sigma = mscn(y, cfg)
        block = b // (2 ** s)
        feats.append(block_features(norm, block))
        if s == 0:
            sharpness = F.avg_pool2d(sigma, block).flatten(1)
        if s + 1 < cfg.scales:
            y = imresize(y / 255.0, scale=0.5, antialiasing=True) * 255.0
    return torch.cat(feats, dim=-1), sharpness


def mvg_distance(feats: torch.Tensor, mu: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """NIQE distance between each image's feature Gaussian and the pristine one -> [N]."""
    feats = feats.to(torch.float64)  # features are float32; the Gaussian algebra needs float64
    mu = mu.to(feats)
    cov = cov.to(feats)
    mu_d = feats.mean(dim=1)
    centred = feats - mu_d.unsqueeze(1)
    cov_d = centred.transpose(1, 2) @ centred / max(feats.shape[1] - 1, 1)
    inv = torch.linalg.pinv((cov.unsqueeze(0) + cov_d) / 2, hermitian=True)
    diff = (mu.unsqueeze(0) - mu_d).unsqueeze(1)
    d2 = (diff @ inv @ diff.transpose(1, 2)).reshape(-1)
    return (d2.clamp_min(0) + 1e-12).sqrt()


# ---------------------------------------------------------------- model
class FaceNIQE(torch.nn.Module):
    """x [N,3,H,W] RGB 0..1 -> raw face-niqe distance [N] (lower = better), differentiable."""

    lower_better = True

    def __init__(self, mu: torch.Tensor, cov: torch.Tensor, cfg: FaceNiqeConfig,
                 norm_range: tuple[float, float] = (3.0, 12.0)):
        super().__init__()
        if mu.shape != (cfg.feature_dim,) or cov.shape != (cfg.feature_dim, cfg.feature_dim):
            raise ValueError(f"face-niqe parameters have shapes {tuple(mu.shape)}/{tuple(cov.shape)}, "
                             f"expected ({cfg.feature_dim},)/({cfg.feature_dim},{cfg.feature_dim})")
        self.cfg = cfg
        self.register_buffer("mu", mu.to(torch.float64))
        self.register_buffer("cov", cov.to(torch.float64))
        self.norm_range = (float(norm_range[0]), float(norm_range[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.mu.device)
        # NSS statistics of 0..255 luminance need float32 at least: never autocast them to fp16
        with torch.autocast(device_type=x.device.type, enabled=False):
            feats, _ = nss_features(x.float(), self.cfg)
            return mvg_distance(feats, self.mu, self.cov).to(torch.float32)

    @staticmethod
    def from_state_dict(sd: dict[str, torch.Tensor]) -> "FaceNIQE":
        missing = [k for k in ("mu", "cov", "norm_range") if k not in sd]
        if missing:
            from ...errors import WrongArchitectureError
            raise WrongArchitectureError(f"not a face-niqe parameter file: missing {missing}")
        cfg = FaceNiqeConfig.from_tensor_dict(sd)
        lo, hi = (float(v) for v in sd["norm_range"])
        return FaceNIQE(sd["mu"], sd["cov"], cfg, (lo, hi))


def fit_mvg(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of all pristine block features (rows with NaN/inf dropped)."""
    allf = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats], dim=0).to(torch.float64)
    allf = allf[torch.isfinite(allf).all(dim=1)]
    mu = allf.mean(0)
    centred = allf - mu
    cov = centred.T @ centred / max(allf.shape[0] - 1, 1)
    return mu, cov


WEIGHTS_NAME = "face-niqe"


def load_face_niqe(path: Optional[str] = None) -> FaceNIQE:
    """The shipped (or a given) face-niqe parameter file as a torch module."""
    from ...models.loading import load_state_dict
    from ...models.locate import resolve
    file = resolve(path or WEIGHTS_NAME, "facerefine", download=False)
    return FaceNIQE.from_state_dict(load_state_dict(file, unwrap=False))


__all__ = ["FaceNiqeConfig", "FaceNIQE", "nss_features", "mvg_distance", "fit_mvg", "aggd_params",
           "load_face_niqe"]
