"""Tiny random-initialised restorers built from the real architecture classes, saved as files.

Other test files import these factories, e.g.::

    from facerefine.lab.tiny_models import make_tiny_codeformer
    path = make_tiny_codeformer(tmp_path / "codeformer.pth")
    restorer = load_restorer(str(path))

Notes:
- CodeFormer (spandrel_extra_arches) has a fixed VQGAN CNN; only the lookup Transformer is small here.
  The file is ~150 MB (fp16) and one forward at 512^2 takes seconds on CPU: share it per module.
- GFPGAN is built from spandrel's own class with a small ``narrow``; spandrel's detector recognises it and
  models.restorers infers the size from the tensor shapes (spandrel itself assumes full size).
- IQPFR is our own dual-branch architecture; tiny by default (64^2 input, fast enough for many tests).
All factories are deterministic for a given seed. Suffix .safetensors -> safetensors, anything else -> a
BasicSR-style ``{"params_ema": state_dict}`` pickle of plain tensors (loadable with weights_only=True).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch


def _save(sd: dict, path, wrap_key: Optional[str] = "params_ema", metadata: Optional[dict] = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".safetensors":
        from ..models.loading import save_safetensors
        return save_safetensors(sd, path, metadata=metadata)
    torch.save({wrap_key: sd} if wrap_key else sd, str(path))
    return path


def _randomise_small(module: torch.nn.Module, seed: int) -> None:
    """Give zero-initialised parameters (position embeddings etc.) small random values."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("position_emb"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


@lru_cache(maxsize=4)
def _codeformer_state(dim_embd: int, n_layers: int, codebook_size: int, connect_list: tuple, seed: int,
                      dtype: torch.dtype) -> dict:
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer
    torch.manual_seed(seed)
    model = CodeFormer(dim_embd=dim_embd, n_head=8, n_layers=n_layers, codebook_size=codebook_size,
                       latent_size=256, connect_list=list(connect_list))
    _randomise_small(model, seed)
    with torch.no_grad():  # spread the codebook so different codes decode differently
        model.quantize.embedding.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(seed + 2))
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}


def make_tiny_codeformer(path, *, dim_embd: int = 32, n_layers: int = 1, codebook_size: int = 64,
                         connect_list=("32", "64", "128", "256"), seed: int = 0,
                         dtype: torch.dtype = torch.float16) -> Path:
    """spandrel CodeFormer with a tiny lookup Transformer (n_head must divide dim_embd: spandrel uses 8)."""
    sd = _codeformer_state(dim_embd, n_layers, codebook_size, tuple(connect_list), seed, dtype)
    return _save(sd, path)


def make_tiny_gfpgan(path, *, narrow: float = 0.125, num_style_feat: int = 64, num_mlp: int = 2,
                     seed: int = 0) -> Path:
    """spandrel GFPGANv1Clean (the v1.3/v1.4 architecture), 512^2, with narrow channels."""
    from ..models.spandrel_loader import gfpgan_class
    GFPGAN = gfpgan_class()
    torch.manual_seed(seed)
    model = GFPGAN(out_size=512, num_style_feat=num_style_feat, channel_multiplier=2, num_mlp=num_mlp,
                   input_is_latent=True, different_w=True, narrow=narrow, sft_half=True)
    return _save(model.state_dict(), path)


def make_tiny_restoreformer(path, *, ch: int = 32, n_embed: int = 64, embed_dim: int = 32, seed: int = 0) -> Path:
    """spandrel RestoreFormer(++) with few channels (shape-detected by spandrel itself)."""
    from spandrel.architectures.RestoreFormer import RestoreFormer
    torch.manual_seed(seed)
    model = RestoreFormer(n_embed=n_embed, embed_dim=embed_dim, ch=ch, ch_mult=(1, 1, 1, 1, 1, 1), num_res_blocks=1,
                          z_channels=embed_dim, resolution=512, head_size=8)
    return _save(model.state_dict(), path)


def tiny_iqpfr_config(**overrides):
    from ..models.arch.iqpfr import IQPFRConfig
    base = dict(img_size=64, nf=32, ch_mult=(1, 1, 2), res_blocks=1, emb_dim=32, codebook_size=32,
                dim_embd=32, n_head=4, n_layers=1, connect_list=("32", "64"), quality_hidden=16)
    base.update(overrides)
    return IQPFRConfig(**base)


def make_tiny_iqpfr(path, *, seed: int = 0, **config_overrides) -> Path:
    """Our dual-branch IQPFR model, tiny (64^2 input, 16x16 tokens). Saved as safetensors with its config."""
    from ..models.arch.iqpfr import IQPFR
    torch.manual_seed(seed)
    model = IQPFR(tiny_iqpfr_config(**config_overrides))
    _randomise_small(model, seed)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed + 2)
        model.quantize.embedding.weight.normal_(0, 1.0, generator=gen)
        model.quantize_hq.embedding.weight.normal_(0, 1.0, generator=gen)
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return _save(model.state_dict(), path)
    return model.save(path)


def make_tiny_quality_condition(path, *, dim_embd: int = 32, n_layers: int = 1, hidden: int = 16,
                                seed: int = 0, random_output: bool = True) -> Path:
    """Quality-conditioning weights for a CodeFormer with the given transformer size.

    random_output=False keeps the zero-initialised output layer (must reproduce plain CodeFormer exactly).
    """
    from ..models.arch.quality_condition import QualityCondition
    torch.manual_seed(seed)
    cond = QualityCondition(dim_embd=dim_embd, n_layers=n_layers, hidden=hidden)
    if random_output:
        with torch.no_grad():
            cond.to_film.weight.normal_(0, 0.2)
            cond.to_film.bias.normal_(0, 0.2)
    return cond.save(path)
