"""Latent score model: a token Transformer denoiser over a restorer's latent grid.

It estimates the clean latent from a noisy one (EDM preconditioning, Karras et al.
2022), conditioned on the degraded latent (the LQ encoder output) and the noise
level. The score follows from the denoiser: grad log p(x; sigma) = (D(x, sigma) - x) / sigma^2.
Latents are standardised per channel with stored statistics, so sigma_data = 1.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURE = "FaceRefine-LatentPrior"
POSITION_MODES = ("learned", "interpolate")


@dataclass(frozen=True)
class LatentPriorConfig:
    latent_channels: int = 256     # channels of the refined latent (CodeFormer: 256)
    cond_channels: int = 256       # channels of the degraded latent
    latent_size: int = 16          # h = w of the latent grid
    hidden: int = 256
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 1.0
    restorer_arch: str = "CodeFormer"  # which restorer's latent this prior models
    # "learned": a learned absolute position per cell of the fixed latent_size grid (older files);
    # "interpolate": the same learned grid, resized (bicubic) to the latent's own grid, so a prior trained
    # at one crop size runs at others (fully convolutional restorers such as IQPFRv2: grid = crop / 16)
    position: str = "learned"
    # how the degraded latent is read before standardisation: "none", or "asinh" for heavy-tailed encoder
    # outputs (IQPFRv2's reach |x| ~ 1e5), which keeps their sign and order but compresses the tails
    cond_transform: str = "none"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "LatentPriorConfig":
        raw = json.loads(text)
        known = LatentPriorConfig.__dataclass_fields__
        return LatentPriorConfig(**{k: v for k, v in raw.items() if k in known})


class _Block(nn.Module):
    """Pre-norm Transformer block whose norms are modulated by the noise embedding (adaLN)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.modulation = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(emb).unsqueeze(1).chunk(6, dim=-1)
        h = self.norm1(x) * (1 + scale1) + shift1
        b, n, d = h.shape
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + (1 + gate1) * self.proj(h)
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + (1 + gate2) * self.mlp(h)


class LatentScoreModel(nn.Module):
    """D(x, sigma | cond): denoised estimate of a standardised latent [N, C, h, w]."""

    def __init__(self, config: LatentPriorConfig = LatentPriorConfig()):
        super().__init__()
        if config.hidden % config.heads:
            raise ValueError(f"hidden ({config.hidden}) must be divisible by heads ({config.heads})")
        if config.cond_transform not in ("none", "asinh"):
            raise ValueError(f"cond_transform must be 'none' or 'asinh', got {config.cond_transform!r}")
        if config.position not in POSITION_MODES:
            raise ValueError(f"position must be one of {POSITION_MODES}, got {config.position!r}")
        self.config = config
        c, d = config.latent_channels, config.hidden
        self.register_buffer("latent_mean", torch.zeros(1, c, 1, 1))
        self.register_buffer("latent_std", torch.ones(1, c, 1, 1))
        self.register_buffer("cond_mean", torch.zeros(1, config.cond_channels, 1, 1))
        self.register_buffer("cond_std", torch.ones(1, config.cond_channels, 1, 1))
        self.embed_in = nn.Linear(c + config.cond_channels, d)
        self.position = nn.Parameter(torch.randn(1, config.latent_size ** 2, d) * 0.02)
        self.register_buffer("fourier_freqs", torch.randn(d // 2) * 4.0)
        self.noise_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(_Block(d, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.norm_out = nn.LayerNorm(d)
        self.out = nn.Linear(d, c)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    # --- standardisation (statistics set by training) ---
    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.latent_mean) / self.latent_std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.latent_std + self.latent_mean

    def transform_cond(self, cond: torch.Tensor) -> torch.Tensor:
        return torch.asinh(cond) if self.config.cond_transform == "asinh" else cond

    def normalize_cond(self, cond: torch.Tensor) -> torch.Tensor:
        return (self.transform_cond(cond) - self.cond_mean) / self.cond_std

    @torch.no_grad()
    def fit_statistics(self, latents: torch.Tensor, cond: torch.Tensor) -> None:
        """Per-channel mean/std of clean and degraded latents [N, C, h, w]."""
        cond = self.transform_cond(cond.float())
        for mean, std, z in ((self.latent_mean, self.latent_std, latents), (self.cond_mean, self.cond_std, cond)):
            mean.copy_(z.float().mean(dim=(0, 2, 3), keepdim=True))
            std.copy_(z.float().std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-4))

    def check_latent(self, z: torch.Tensor, cond: torch.Tensor) -> None:
        cfg = self.config
        if cfg.position == "interpolate":
            if z.ndim != 4 or z.shape[1] != cfg.latent_channels:
                raise ValueError(f"latent prior expects [N,{cfg.latent_channels},h,w] latents of "
                                 f"{cfg.restorer_arch}, got {tuple(z.shape)}")
        elif z.ndim != 4 or z.shape[1] != cfg.latent_channels or z.shape[-1] * z.shape[-2] != cfg.latent_size ** 2:
            raise ValueError(f"latent prior expects [N,{cfg.latent_channels},{cfg.latent_size},{cfg.latent_size}] "
                             f"latents of {cfg.restorer_arch}, got {tuple(z.shape)}")
        if cond.shape[1] != cfg.cond_channels:
            raise ValueError(f"latent prior expects {cfg.cond_channels}-channel degraded latents, "
                             f"got {cond.shape[1]}")

    def position_for(self, h: int, w: int) -> torch.Tensor:
        """[1, h*w, hidden] position embedding of an h x w grid (resized from the learned one if allowed)."""
        size = self.config.latent_size
        if (h, w) == (size, size):
            return self.position
        if self.config.position != "interpolate":
            raise ValueError(f"this latent prior has learned positions for a {size}x{size} grid only, "
                             f"got {h}x{w}")
        grid = self.position.transpose(1, 2).reshape(1, -1, size, size)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return grid.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x: noisy standardised latent; sigma: [N] or scalar; cond: standardised degraded latent."""
        cfg = self.config
        n, c, h, w = x.shape
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(n)
        s = sigma.view(n, 1, 1, 1)
        sd2 = cfg.sigma_data ** 2
        c_skip = sd2 / (s ** 2 + sd2)
        c_out = s * cfg.sigma_data / (s ** 2 + sd2).sqrt()
        c_in = 1 / (s ** 2 + sd2).sqrt()
        if cond.shape[-2:] != (h, w):
            cond = F.interpolate(cond, size=(h, w), mode="area" if cond.shape[-1] > w else "bilinear")
        tokens = torch.cat([(c_in * x), cond.to(x.dtype)], dim=1).flatten(2).transpose(1, 2)
        tokens = self.embed_in(tokens) + self.position_for(h, w).to(tokens.dtype)
        angles = (sigma.log() / 4).unsqueeze(1) * self.fourier_freqs.unsqueeze(0) * (2 * math.pi)
        emb = self.noise_mlp(torch.cat([angles.cos(), angles.sin()], dim=1).to(tokens.dtype))
        for block in self.blocks:
            tokens = block(tokens, emb)
        f = self.out(self.norm_out(tokens)).transpose(1, 2).reshape(n, c, h, w)
        return c_skip * x + c_out * f.to(x.dtype)


def build_latent_prior(config: LatentPriorConfig | None = None, **overrides) -> LatentScoreModel:
    cfg = config or LatentPriorConfig()
    if overrides:
        cfg = LatentPriorConfig(**{**asdict(cfg), **overrides})
    return LatentScoreModel(cfg)


def save_latent_prior(model: LatentScoreModel, path) -> "object":
    from ..loading import save_safetensors
    return save_safetensors(model.state_dict(), path,
                            metadata={"architecture": ARCHITECTURE, "config": model.config.to_json()})


def load_latent_prior(path, device: str | torch.device = "cpu") -> LatentScoreModel:
    """Rebuild a prior from a safetensors file (config in its metadata)."""
    from safetensors import safe_open

    from ...errors import WrongArchitectureError
    from ..loading import load_into, load_state_dict
    sd = load_state_dict(path)
    meta = {}
    if str(path).endswith(".safetensors"):
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    if meta.get("architecture", ARCHITECTURE) != ARCHITECTURE or "config" not in meta:
        raise WrongArchitectureError(
            f"{path} is not a FaceRefine latent prior (expected a .safetensors file with architecture "
            f"{ARCHITECTURE} and its config in the metadata; got {meta.get('architecture', 'no metadata')})")
    model = LatentScoreModel(LatentPriorConfig.from_json(meta["config"]))
    load_into(model, sd, ARCHITECTURE, str(path))
    return model.to(device).eval()
