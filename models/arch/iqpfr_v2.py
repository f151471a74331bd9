"""IQPFR compact v2: the embedded default restorer (our architecture; trained here on CPU).

Same IQPFR structure as v1 (encoder -> quality-conditioned lookup over a dual-branch codebook ->
decoder), but built for the crop it restores and the 2-core CPU it trains on:

- **Fully convolutional** around the token grid: any crop size that is a multiple of 16 (256², 512²)
  runs at its own resolution. A pixel-unshuffle stem moves the crop to 1/4 resolution losslessly; the
  body works at 1/4, 1/8 and 1/16; a pixel-shuffle head returns a full-resolution correction.
- **Residual output:** ``out = x + strength(w) * correction``: fidelity ``w = 0.5`` (the default) applies
  the learned restoration once, ``w = 1`` returns the input exactly, and ``w < 0.5`` pushes the correction
  further (1.5x at 0). Nothing the model leaves alone is darkened or tinted.
- **Dual-branch codebook:** a universal codebook (structure) and an HQ codebook (attributes of
  high-quality faces). The HQ branch enters the decoder scaled by the quality value.
- **Quality conditioning** (the slider): the NR-IQA quality value FiLM-conditions the lookup
  Transformer and every decoder block; training targets at quality ``q`` carry ``q`` of the HQ face's
  detail above a smooth base, so the slider moves from "clean and smooth" (0) to "full detail" (1).

Implements the codebook interface (models/codebook.py). ``skips`` carries the input crop and the quality
value (set by :meth:`with_quality`), so a later step can decode an edited latent. The straight-through
training lookup is in lab/train/iqpfr.py.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import WrongArchitectureError

FORMAT = "facerefine-iqpfr-v2"

# limits for configs read from a file header (a file must not ask for a huge model)
_LIMITS = {"widths": (8, 512), "emb_dim": (4, 512), "codebook_size": (2, 4096),
           "dim_embd": (8, 1024), "n_head": (1, 16), "n_layers": (0, 12), "quality_hidden": (4, 512)}


@dataclass(frozen=True)
class IQPFRv2Config:
    widths: tuple = (48, 96, 160)       # channels at 1/4, 1/8, 1/16 of the crop
    enc_blocks: tuple = (2, 2, 1)       # residual blocks per encoder level
    dec_blocks: tuple = (2, 1, 1)       # residual blocks per decoder level (1/4, 1/8, 1/16)
    emb_dim: int = 32                   # code vector width
    codebook_size: int = 256            # codes per branch
    dim_embd: int = 128                 # lookup Transformer width
    n_head: int = 4
    n_layers: int = 2
    quality_hidden: int = 64

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @staticmethod
    def from_json(text: str) -> "IQPFRv2Config":
        try:
            raw = json.loads(text)
        except (TypeError, ValueError) as err:
            raise WrongArchitectureError(f"IQPFRv2 config is not valid JSON: {err}") from err
        if not isinstance(raw, dict):
            raise WrongArchitectureError("IQPFRv2 config must be a JSON object")
        known = {f.name for f in dataclasses.fields(IQPFRv2Config)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise WrongArchitectureError(f"IQPFRv2 config has unknown keys {unknown}; known: {sorted(known)}")
        raw = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        cfg = IQPFRv2Config(**raw)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for name, (lo, hi) in _LIMITS.items():
            value = getattr(self, name)
            values = value if isinstance(value, tuple) else (value,)
            if name in ("widths",) and len(values) != 3:
                raise WrongArchitectureError(f"IQPFRv2 config: {name} needs 3 values, got {value}")
            if not all(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi for v in values):
                raise WrongArchitectureError(f"IQPFRv2 config: {name}={value} outside {lo}..{hi}")
        for name in ("enc_blocks", "dec_blocks"):
            value = getattr(self, name)
            if len(value) != 3 or not all(isinstance(v, int) and 0 <= v <= 8 for v in value):
                raise WrongArchitectureError(f"IQPFRv2 config: {name}={value} needs 3 integers in 0..8")
        if self.dim_embd % self.n_head:
            raise WrongArchitectureError("IQPFRv2 config: dim_embd must be a multiple of n_head")


class FiLMResBlock(nn.Module):
    """conv-act-conv residual block; optional per-channel FiLM (scale, shift) from the quality embedding."""

    def __init__(self, ch: int, cond: int = 0):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        self.to_film = nn.Linear(cond, 2 * ch) if cond else None
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        if self.to_film is not None:
            nn.init.zeros_(self.to_film.weight)
            nn.init.zeros_(self.to_film.bias)

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = F.silu(self.conv1(x))
        if self.to_film is not None and cond is not None:
            scale, shift = self.to_film(cond)[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        return x + self.conv2(h)


class FiLMTransformerLayer(nn.Module):
    """Pre-norm self-attention + MLP; FiLM on the normalised tokens from the quality embedding."""

    def __init__(self, dim: int, heads: int, cond: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.to_film = nn.Linear(cond, 2 * dim)
        nn.init.zeros_(self.to_film.weight)
        nn.init.zeros_(self.to_film.bias)

    def forward(self, x: torch.Tensor, film: Optional[torch.Tensor]) -> torch.Tensor:
        h = self.norm1(x)
        if film is not None:
            scale, shift = self.to_film(film)[:, None, :].chunk(2, dim=2)
            h = h * (1 + scale) + shift
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


FIDELITY_ZERO_GAIN = 1.5  # correction gain at fidelity 0 (looked at: no halos or overshoot on degraded faces)


def correction_strength(fidelity: float) -> float:
    """How much of the learned correction is applied. Fidelity 0.5 (the default) applies it once. Above, it
    fades linearly to none at 1, which returns the input exactly. Below, it grows linearly to
    ``FIDELITY_ZERO_GAIN`` at 0 (further from the input), so every part of the slider changes the output."""
    w = float(fidelity)
    if w >= 0.5:
        return 2.0 * (1.0 - w)
    return 1.0 + (FIDELITY_ZERO_GAIN - 1.0) * (0.5 - w) / 0.5


class IQPFRv2(nn.Module):
    generator_taps = {"e4": "e4", "e8": "e8", "input": "input", "quality": "quality"}
    img_size = 512  # nominal (the crop step's default); any multiple of 16 runs at its own size
    latent_stride = 16

    def __init__(self, config: IQPFRv2Config = IQPFRv2Config()):
        super().__init__()
        config.validate()
        c = self.config = config
        w4, w8, w16 = c.widths
        qh = c.quality_hidden
        # encoder
        self.stem = nn.Conv2d(48, w4, 3, padding=1)
        self.enc4 = nn.ModuleList(FiLMResBlock(w4) for _ in range(c.enc_blocks[0]))
        self.down8 = nn.Conv2d(w4, w8, 3, stride=2, padding=1)
        self.enc8 = nn.ModuleList(FiLMResBlock(w8) for _ in range(c.enc_blocks[1]))
        self.down16 = nn.Conv2d(w8, w16, 3, stride=2, padding=1)
        self.enc16 = nn.ModuleList(FiLMResBlock(w16) for _ in range(c.enc_blocks[2]))
        self.to_emb = nn.Conv2d(w16, c.emb_dim, 1)
        # dual-branch codebook: [2, K, C] (0 = universal, 1 = HQ-specific)
        self.codebook = nn.Parameter(torch.randn(2, c.codebook_size, c.emb_dim) * 0.5)
        # quality-conditioned lookup Transformer
        self.quality_mlp = nn.Sequential(nn.Linear(1, qh), nn.SiLU(), nn.Linear(qh, qh))
        self.pos = nn.Conv2d(c.emb_dim, c.emb_dim, 3, padding=1, groups=c.emb_dim)
        self.token_in = nn.Linear(c.emb_dim, c.dim_embd)
        self.layers = nn.ModuleList(FiLMTransformerLayer(c.dim_embd, c.n_head, qh) for _ in range(c.n_layers))
        self.norm_out = nn.LayerNorm(c.dim_embd)
        self.head = nn.Linear(c.dim_embd, 2 * c.codebook_size)
        # decoder
        self.dec_quality = nn.Sequential(nn.Linear(1, qh), nn.SiLU(), nn.Linear(qh, qh))
        self.merge = nn.Conv2d(2 * c.emb_dim, w16, 3, padding=1)
        self.dec16 = nn.ModuleList(FiLMResBlock(w16, qh) for _ in range(c.dec_blocks[2]))
        self.up8 = nn.Conv2d(w16, w8, 3, padding=1)
        self.fuse8 = nn.Conv2d(2 * w8, w8, 1)
        self.dec8 = nn.ModuleList(FiLMResBlock(w8, qh) for _ in range(c.dec_blocks[1]))
        self.up4 = nn.Conv2d(w8, w4, 3, padding=1)
        self.fuse4 = nn.Conv2d(2 * w4, w4, 1)
        self.dec4 = nn.ModuleList(FiLMResBlock(w4, qh) for _ in range(c.dec_blocks[0]))
        self.to_out = nn.Conv2d(w4, 48, 3, padding=1)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    # -- codebook interface (models/codebook.py) ------------------------------------------------
    @property
    def codebooks(self) -> torch.Tensor:
        return self.codebook

    def check_size(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        if h % self.latent_stride or w % self.latent_stride:
            raise ValueError(f"IQPFRv2 needs a crop size that is a multiple of {self.latent_stride}, got {h}x{w}")

    def encode(self, x: torch.Tensor):
        """x in [-1, 1] -> (lq_feat [N, C, h, w], skips incl. the input itself)."""
        self.check_size(x)
        h = self.stem(F.pixel_unshuffle(x, 4))
        for block in self.enc4:
            h = block(h)
        e4 = h
        h = self.down8(F.silu(h))
        for block in self.enc8:
            h = block(h)
        e8 = h
        h = self.down16(F.silu(h))
        for block in self.enc16:
            h = block(h)
        return self.to_emb(h), {"e4": e4, "e8": e8, "input": x}

    def film(self, quality: torch.Tensor) -> torch.Tensor:
        return self.quality_mlp(quality.reshape(-1, 1).float().to(self.codebook.device))

    def logits(self, lq_feat: torch.Tensor, film: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[N, 2hw, K]: tokens 0..hw-1 pick universal codes, hw..2hw-1 HQ codes."""
        n, _, h, w = lq_feat.shape
        tokens = self.token_in((lq_feat + self.pos(lq_feat)).flatten(2).transpose(1, 2))
        for layer in self.layers:
            tokens = layer(tokens, film)
        out = self.head(self.norm_out(tokens))  # [N, hw, 2K]
        k = self.config.codebook_size
        return torch.cat([out[..., :k], out[..., k:]], dim=1)

    def code_features(self, indices: torch.Tensor) -> torch.Tensor:
        hw = indices.shape[1] // 2
        return torch.cat([self.codebook[0][indices[:, :hw]], self.codebook[1][indices[:, hw:]]], dim=1)

    def finish_quantize(self, raw: torch.Tensor, lq_feat: torch.Tensor) -> torch.Tensor:
        """[N, 2hw, C] code vectors -> [N, 2C, h, w] (universal channels, then HQ channels)."""
        n, _, h, w = lq_feat.shape
        c = self.config.emb_dim
        return raw.reshape(n, 2, h * w, c).permute(0, 1, 3, 2).reshape(n, 2 * c, h, w)

    def with_quality(self, skips: Mapping[str, torch.Tensor], quality: torch.Tensor) -> Mapping[str, torch.Tensor]:
        return {**skips, "quality": quality.reshape(-1).float()}

    def decode(self, quantized: torch.Tensor, skips: Mapping[str, torch.Tensor], fidelity: float = 0.5) -> torch.Tensor:
        """-> restored crop in [-1, 1] (unclamped) = input + correction_strength(fidelity) * correction."""
        missing = [k for k in ("e4", "e8", "input") if k not in skips]
        if missing:
            raise ValueError(f"IQPFRv2 decodes from the encoder's skips; missing {missing}")
        x = skips["input"]
        n = x.shape[0]
        quality = skips.get("quality")
        if quality is None:
            quality = torch.ones(n, device=x.device)
        quality = quality.reshape(-1, 1).float().to(x.device)
        cond = self.dec_quality(quality)
        c = self.config.emb_dim
        q = torch.cat([quantized[:, :c], quantized[:, c:] * quality[:, :, None, None]], dim=1)
        h = self.merge(q.to(self.merge.weight.dtype))
        for block in self.dec16:
            h = block(h, cond)
        h = self.up8(F.interpolate(F.silu(h), scale_factor=2.0, mode="nearest"))
        h = self.fuse8(torch.cat([h, skips["e8"]], dim=1))
        for block in self.dec8:
            h = block(h, cond)
        h = self.up4(F.interpolate(F.silu(h), scale_factor=2.0, mode="nearest"))
        h = self.fuse4(torch.cat([h, skips["e4"]], dim=1))
        for block in self.dec4:
            h = block(h, cond)
        correction = F.pixel_shuffle(self.to_out(F.silu(h)), 4)
        return x + correction_strength(fidelity) * correction.to(x.dtype)

    def forward(self, x: torch.Tensor, fidelity: float = 0.5, quality: float | torch.Tensor = 1.0):
        """x in [-1, 1] -> (restored [-1, 1], logits)."""
        n = x.shape[0]
        if not torch.is_tensor(quality):
            quality = torch.full((n,), float(quality), device=x.device)
        lq, skips = self.encode(x)
        logits = self.logits(lq, self.film(quality))
        raw = self.code_features(logits.argmax(dim=2))
        out = self.decode(self.finish_quantize(raw, lq), self.with_quality(skips, quality), fidelity)
        return out, logits

    # -- files ---------------------------------------------------------------------------------
    @staticmethod
    def is_state_dict(sd: Mapping) -> bool:
        return "to_out.weight" in sd and "codebook" in sd and "dec_quality.0.weight" in sd

    def save(self, path, max_megabytes: float = 40.0) -> Path:
        from safetensors.torch import save_file
        path = Path(path)
        sd = {k: v.detach().to(torch.float16).contiguous() for k, v in self.state_dict().items()}
        size_mb = sum(v.numel() * 2 for v in sd.values()) / 2 ** 20
        if size_mb > max_megabytes:
            raise ValueError(f"IQPFRv2 export would be {size_mb:.1f} MB, over the {max_megabytes:.0f} MB limit")
        tmp = path.with_name(f".{path.name}.{torch.randint(0, 2 ** 31, (1,)).item()}.tmp")
        try:
            save_file(sd, str(tmp), metadata={"format": FORMAT, "config": self.config.to_json()})
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def from_file(cls, path, sd: Optional[Mapping[str, torch.Tensor]] = None) -> "IQPFRv2":
        path = Path(path)
        config = read_config(path) or IQPFRv2Config()
        with torch.device("meta"):
            model = cls(config)
        if sd is None:
            from safetensors.torch import load_file
            sd = load_file(str(path))
        expected = model.state_dict()
        missing = [k for k in expected if k not in sd]
        unexpected = [k for k in sd if k not in expected]
        wrong = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                 if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
        if missing or unexpected or wrong:
            raise WrongArchitectureError(
                f"{path.name} does not match the IQPFRv2 architecture: missing {missing[:4]}, "
                f"unexpected {unexpected[:4]}, wrong shapes {wrong[:3]}")
        model = cls(config)
        model.load_state_dict({k: v.float() for k, v in sd.items()})
        return model


def read_config(path) -> Optional[IQPFRv2Config]:
    """Config from a safetensors header (validated against limits), None when absent."""
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    if meta.get("format") not in (None, FORMAT):
        raise WrongArchitectureError(f"{Path(path).name} has format {meta.get('format')!r}, not {FORMAT}")
    return IQPFRv2Config.from_json(meta["config"]) if "config" in meta else None
