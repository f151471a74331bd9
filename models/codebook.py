"""The codebook interface of lookup restorers: CodeFormer (models/arch/codeformer.py), IQPFR, IQPFR v2.

core/lookup and core/refine call only these, in this order:
``encode -> film -> logits -> code_features -> finish_quantize -> with_quality -> decode``.
Images are in [-1, 1]; tokens are [N, L, ...] with L = groups x latent grid.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Optional, Protocol

if TYPE_CHECKING:
    from torch import Tensor

Skips = Mapping[str, "Tensor"]


class CodebookModel(Protocol):
    img_size: int                        # the size it was built for (fully convolutional ones run at others too)
    generator_taps: Mapping              # decoder point -> the skip it fuses (decode needs these for fidelity > 0)

    @property
    def codebooks(self) -> "Tensor":
        """[G, K, C]: the code vectors of each token group (CodeFormer 1, IQPFR universal + HQ)."""

    def encode(self, x: "Tensor") -> tuple["Tensor", dict]:
        """x [N,3,S,S] in [-1,1] -> (lq_feat [N,C,h,w], skips)."""

    def film(self, quality: "Tensor") -> Optional["Tensor"]:
        """[N] quality targets -> conditioning for ``logits``; None when the model has none."""

    def logits(self, lq_feat: "Tensor", film: Optional["Tensor"] = None) -> "Tensor":
        """-> [N, L, K] code logits."""

    def code_features(self, indices: "Tensor") -> "Tensor":
        """[N, L] code indices -> [N, L, C] code vectors."""

    def finish_quantize(self, raw: "Tensor", lq_feat: "Tensor") -> "Tensor":
        """[N, L, C] code vectors -> the quantized latent the decoder takes [N, C', h, w]."""

    def with_quality(self, skips: Skips, quality: "Tensor") -> Skips:
        """The skips the decoder takes for these quality targets (unchanged where the decoder is not conditioned)."""

    def decode(self, quantized: "Tensor", skips: Skips, fidelity: float = 0.5) -> "Tensor":
        """-> faces [N,3,S,S] in [-1,1] (unclamped); fidelity fuses the encoder skips (0 = none)."""


__all__ = ["CodebookModel", "Skips"]
