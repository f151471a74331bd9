"""Training helpers of the IQPFR models (the runtime architectures are in models/arch/): which parameters a
stage trains, the dual-branch nearest-code quantisation, and IQPFR v2's straight-through lookup.
The losses are the stages' own (lab/train/stages.py, compact_v2.py, compact_v3.py)."""
from __future__ import annotations

import torch
from torch import nn


def quantize_dual(model, z: torch.Tensor):
    """IQPFR: nearest-code quantisation of an encoder latent into both branches (HQ = residual).
    -> (q_universal, q_hq, loss_universal, loss_hq, indices [N, 2hw])."""
    q_u, loss_u, stats_u = model.quantize(z)
    q_h, loss_h, stats_h = model.quantize_hq(z - q_u.detach())
    idx = torch.cat([stats_u["min_encoding_indices"].view(z.shape[0], -1),
                     stats_h["min_encoding_indices"].view(z.shape[0], -1)], dim=1)
    return q_u, q_h, loss_u, loss_h, idx


def stage_parameters(model, stage: str) -> list[nn.Parameter]:
    """IQPFR parameters trained in a stage: 'codebook' (VQ autoencoder) or 'lookup' (encoder, Transformer,
    quality conditioning, fidelity fusion; codebooks, merge and generator stay fixed)."""
    if stage == "codebook":
        mods = [model.encoder, model.quantize, model.quantize_hq, model.merge, model.generator]
    elif stage == "lookup":
        mods = [model.encoder, model.feat_emb, model.ft_layers, model.idx_pred_layer, model.idx_pred_hq,
                model.quality_condition, model.fuse_convs_dict]
        return [model.position_emb] + [p for m in mods for p in m.parameters()]
    else:
        raise ValueError(f"unknown stage {stage!r}; use 'codebook' or 'lookup'")
    return [p for m in mods for p in m.parameters()]


def parameter_megabytes(model: nn.Module, bytes_per_param: int = 2) -> float:
    """Size of the weights file in MB at fp16 (the compact-model budget is <= 40 MB)."""
    return sum(p.numel() for p in model.state_dict().values()) * bytes_per_param / 1e6


def soft_code_features(model, logits: torch.Tensor) -> torch.Tensor:
    """IQPFR v2 training lookup: hard top-1 codes forward, softmax-weighted codes backward (straight-through)."""
    hw = logits.shape[1] // 2
    probs = logits.float().softmax(dim=2)
    soft = torch.cat([probs[:, :hw] @ model.codebook[0], probs[:, hw:] @ model.codebook[1]], dim=1)
    hard = model.code_features(probs.argmax(dim=2))
    return hard + soft - soft.detach()


def straight_through_forward(model, x: torch.Tensor, quality: torch.Tensor, fidelity: float = 0.5):
    """IQPFR v2's forward with the straight-through lookup: x in [-1, 1] -> (restored [-1, 1], logits)."""
    lq, skips = model.encode(x)
    logits = model.logits(lq, model.film(quality))
    raw = soft_code_features(model, logits)
    out = model.decode(model.finish_quantize(raw, lq), model.with_quality(skips, quality), fidelity)
    return out, logits


__all__ = ["parameter_megabytes", "quantize_dual", "soft_code_features", "stage_parameters",
           "straight_through_forward"]
