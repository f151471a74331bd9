"""IQPFR quality conditioning for a CodeFormer-style lookup Transformer.

Choice: FiLM on the Transformer's residual stream (an AdaLN-style scale/shift per layer), applied
*between* spandrel's unchanged ``TransformerSALayer`` calls and once before the logits head:

    tokens <- tokens * (1 + gamma_i(q)) + beta_i(q)

``gamma/beta`` come from a small MLP of a Fourier embedding of the target NR-IQA score ``q`` (0..1).
The output layer is zero-initialised, so untrained (or absent) conditioning leaves every token exactly
as it was: ``x * 1.0 + 0.0 == x`` bit for bit. Modulating between layers (instead of inside each
LayerNorm, as full AdaLN would) lets us call spandrel's layers as they are instead of forking them.
A conditioning token would change the attention's softmax normaliser and break bit-exactness.

Weights live in their own small safetensors file with metadata ``format=facerefine-quality-condition``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch
from torch import nn

from ...errors import WrongArchitectureError

FORMAT = "facerefine-quality-condition"
_KEYS = ("freqs", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "to_film.weight", "to_film.bias")


class QualityCondition(nn.Module):
    """Maps a quality target q in [0,1] to per-layer FiLM parameters for a lookup Transformer."""

    def __init__(self, dim_embd: int, n_layers: int, hidden: int = 128, n_freqs: int = 8):
        super().__init__()
        self.dim_embd, self.n_layers, self.hidden, self.n_freqs = dim_embd, n_layers, hidden, n_freqs
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(n_freqs, dtype=torch.float32), persistent=True)
        self.mlp = nn.Sequential(nn.Linear(2 * n_freqs + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        # one (gamma, beta) pair per Transformer layer + one before the logits head
        self.to_film = nn.Linear(hidden, (n_layers + 1) * 2 * dim_embd)
        nn.init.zeros_(self.to_film.weight)
        nn.init.zeros_(self.to_film.bias)

    def embed(self, quality: torch.Tensor) -> torch.Tensor:
        q = quality.float().reshape(-1, 1)
        ang = q * self.freqs
        return torch.cat([q, ang.sin(), ang.cos()], dim=1)

    def forward(self, quality: torch.Tensor) -> torch.Tensor:
        """[B] quality -> [n_layers+1, 2, B, dim_embd] (gamma, beta) in the Transformer's (L,B,C) layout."""
        film = self.to_film(torch.nn.functional.silu(self.mlp(self.embed(quality.to(self.freqs.device)))))
        return film.view(-1, self.n_layers + 1, 2, self.dim_embd).permute(1, 2, 0, 3)

    @staticmethod
    def modulate(tokens: torch.Tensor, film_i: torch.Tensor) -> torch.Tensor:
        """tokens [L,B,C]; film_i [2,B,C]."""
        gamma, beta = film_i[0].to(tokens.dtype), film_i[1].to(tokens.dtype)
        return tokens * (1 + gamma) + beta

    def config(self) -> dict:
        return {"dim_embd": self.dim_embd, "n_layers": self.n_layers, "hidden": self.hidden, "n_freqs": self.n_freqs}

    def save(self, path) -> Path:
        from ..loading import save_safetensors
        meta = {"format": FORMAT, **self.config()}
        return save_safetensors(self.state_dict(), path, metadata=meta)

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], dim_embd: int, n_layers: int,
                        file: str = "", detect: Optional[Callable[[Mapping], Optional[str]]] = None
                        ) -> "QualityCondition":
        """Build for a Transformer of width ``dim_embd`` with ``n_layers`` layers; anything else (a restorer
        checkpoint, conditioning for another Transformer) gives a clear WrongArchitectureError.
        ``detect(sd)`` names a foreign checkpoint's architecture in that error (models.restorers passes its
        detector: this module does not import the restorers)."""
        from ..loading import load_into
        sd = strip_prefix(sd)
        if not all(k in sd for k in _KEYS):
            raise WrongArchitectureError(
                f"{file or 'weights'} is not a FaceRefine quality-conditioning file{_describe(sd, detect)}. "
                f"Expected the small '{FORMAT}' safetensors (keys {list(_KEYS[1:4])}...); "
                f"restorer checkpoints go in the restorer input, not the conditioning input.")
        expected, got = (n_layers + 1) * 2 * dim_embd, sd["to_film.weight"].shape[0]
        if got != expected:
            raise WrongArchitectureError(
                f"{file or 'weights'} conditions a different Transformer: it has {got} FiLM outputs, the restorer "
                f"needs {expected} (dim_embd={dim_embd}, n_layers={n_layers}). Use the conditioning file trained "
                f"for this restorer.")
        cond = cls(dim_embd=dim_embd, n_layers=n_layers, hidden=sd["mlp.0.weight"].shape[0],
                   n_freqs=sd["freqs"].shape[0])
        load_into(cond, sd, "QualityCondition", file)
        return cond


def load_quality_condition(path, dim_embd: int, n_layers: int,
                           detect: Optional[Callable[[Mapping], Optional[str]]] = None) -> QualityCondition:
    """Load conditioning weights (safetensors, or .pth via weights_only) for the given Transformer size."""
    from ..loading import load_state_dict
    path = Path(path)
    return QualityCondition.from_state_dict(load_state_dict(path), dim_embd, n_layers, path.name, detect)


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str = "quality_condition.") -> dict:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return dict(sd)


def _describe(sd: Mapping, detect: Optional[Callable[[Mapping], Optional[str]]] = None) -> str:
    """Name the architecture of a state dict with ``detect`` (spandrel's detectors), for error messages."""
    try:
        arch = detect(sd) if detect is not None else None
    except Exception:  # detection is best effort here
        arch = None
    if arch:
        return f" (it looks like a {arch} restorer checkpoint)"
    return f" (first keys: {list(sd)[:3]})"
