"""The codebook interface (models/codebook.py) over spandrel's CodeFormer, calling its submodules.

Reproduces ``CodeFormer.forward`` (encoder skips, Transformer, top-1 code, AdaIN, fused generator) step by
step, with optional FiLM quality conditioning between the Transformer layers (models/arch/quality_condition.py).
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import nn

from .iqpfr import spandrel_codeformer_blocks
from .quality_condition import QualityCondition


class CodeFormerCodebook(nn.Module):
    img_size = 512
    latent_hw = 16

    def __init__(self, net: nn.Module, condition: Optional[QualityCondition] = None):
        super().__init__()
        self.net = net
        self.quality_condition = condition
        self.encoder_taps = {net.fuse_encoder_block[s]: s for s in net.connect_list}
        self.generator_taps = {net.fuse_generator_block[s]: s for s in net.connect_list}

    @property
    def dim_embd(self) -> int:
        return self.net.dim_embd

    @property
    def n_layers(self) -> int:
        return self.net.n_layers

    @property
    def codebooks(self) -> torch.Tensor:
        return self.net.quantize.embedding.weight.unsqueeze(0)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        skips = {}
        for i, block in enumerate(self.net.encoder.blocks):
            x = block(x)
            size = self.encoder_taps.get(i)
            if size is not None:
                skips[size] = x
        return x, skips

    def film(self, quality: torch.Tensor) -> Optional[torch.Tensor]:
        return None if self.quality_condition is None else self.quality_condition(quality)

    def logits(self, lq_feat: torch.Tensor, film: Optional[torch.Tensor] = None) -> torch.Tensor:
        net = self.net
        pos = net.position_emb.unsqueeze(1).expand(-1, lq_feat.shape[0], -1)
        tokens = net.feat_emb(lq_feat.flatten(2).permute(2, 0, 1))
        for i, layer in enumerate(net.ft_layers):
            if film is not None:
                tokens = QualityCondition.modulate(tokens, film[i])
            tokens = layer(tokens, query_pos=pos)
        if film is not None:
            tokens = QualityCondition.modulate(tokens, film[-1])
        return net.idx_pred_layer(tokens).permute(1, 0, 2)

    def code_features(self, indices: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(indices, self.net.quantize.embedding.weight)

    def finish_quantize(self, raw: torch.Tensor, lq_feat: torch.Tensor) -> torch.Tensor:
        n, hw, ch = raw.shape
        s = self.latent_hw
        quant = raw.view(n, s, s, ch).permute(0, 3, 1, 2).contiguous()  # as spandrel: same reduction order
        return spandrel_codeformer_blocks().adaptive_instance_normalization(quant, lq_feat)

    def with_quality(self, skips: Mapping[str, torch.Tensor], quality: torch.Tensor) -> Mapping[str, torch.Tensor]:
        return skips  # the decoder is not quality-conditioned

    def decode(self, quantized: torch.Tensor, skips: Mapping[str, torch.Tensor], fidelity: float = 0.5) -> torch.Tensor:
        x = quantized
        fuse = self.net.fuse_convs_dict
        for i, block in enumerate(self.net.generator.blocks):
            x = block(x)
            size = self.generator_taps.get(i)
            if size is not None and fidelity > 0:
                x = fuse[size](skips[size], x, fidelity)
        return x


__all__ = ["CodeFormerCodebook"]
