"""Face restorers: community checkpoints through spandrel (+ spandrel_extra_arches) and our IQPFR model.

Architectures are detected from the state dict. Files are read only through models.loading
(safetensors, or .pth with weights_only=True); spandrel then builds and fills its own classes.

Codebook restorers (CodeFormer, IQPFR) expose one method surface used by core/lookup:
``encode`` -> ``logits`` -> ``code_features``/``finish_quantize`` -> ``decode`` (see models.arch.iqpfr).
GFPGAN and RestoreFormer(++) run whole (no lookup Transformer, so no quality slider).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from ..errors import FaceRefineError, WrongArchitectureError
from .arch.iqpfr import IQPFR
from .arch.iqpfr_v2 import IQPFRv2
from .arch.quality_condition import QualityCondition, load_quality_condition
from .loading import load_state_dict

SUPPORTED = ("CodeFormer", "GFPGAN", "RestoreFormer", "IQPFR", "IQPFRv2")
CODEBOOK_ARCHS = ("CodeFormer", "IQPFR", "IQPFRv2")
QUALITY_BUILT_IN = ("IQPFR", "IQPFRv2")  # architectures with trained quality conditioning inside

_extra_installed = False


def install_extra_arches() -> None:
    """Add spandrel_extra_arches (CodeFormer) to spandrel's registry once; ComfyUI may have done it already."""
    global _extra_installed
    if _extra_installed:
        return
    from spandrel import MAIN_REGISTRY
    from .arch.iqpfr import quiet_dependency_warnings
    with quiet_dependency_warnings():  # its CodeFormer uses @torch.jit.script (FutureWarning on every run)
        from spandrel_extra_arches import EXTRA_REGISTRY
    # spandrel 0.3 (AUTOMATIC1111's pin) has no ignore_duplicates: add only what is not there yet
    MAIN_REGISTRY.add(*[support for support in EXTRA_REGISTRY if support.architecture.id not in MAIN_REGISTRY])
    _extra_installed = True


def canonical_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """RestoreFormer++ Lightning checkpoints keep the generator under 'vqvae.' next to loss weights."""
    if any(k.startswith("vqvae.") for k in sd) and not any(k.startswith("encoder.") for k in sd):
        return {k[len("vqvae."):]: v for k, v in sd.items() if k.startswith("vqvae.")}
    return dict(sd)


def detect_architecture(sd: Mapping[str, torch.Tensor]) -> Optional[str]:
    """Architecture id from the keys (IQPFR first, then spandrel's detectors); None if unknown."""
    if IQPFRv2.is_state_dict(sd):
        return "IQPFRv2"
    if IQPFR.is_iqpfr_state_dict(sd):
        return "IQPFR"
    install_extra_arches()
    from spandrel import MAIN_REGISTRY
    sd = canonical_state_dict(sd)
    for support in MAIN_REGISTRY:
        try:
            if support.architecture.detect(sd):
                return support.architecture.id
        except Exception:  # a detector tripping on foreign keys means "not this one"
            continue
    return None


class CodeFormerCodebook(nn.Module):
    """The shared lookup surface over spandrel's CodeFormer, calling its submodules.

    Reproduces ``CodeFormer.forward`` (encoder skips, Transformer, top-1 code, AdaIN, fused generator)
    step by step, with optional FiLM quality conditioning between the Transformer layers.
    """

    architecture = "CodeFormer"

    def __init__(self, net: nn.Module, condition: Optional[QualityCondition] = None):
        super().__init__()
        self.net = net
        self.quality_condition = condition
        self.encoder_taps = {net.fuse_encoder_block[s]: s for s in net.connect_list}
        self.generator_taps = {net.fuse_generator_block[s]: s for s in net.connect_list}

    img_size = 512
    latent_hw = 16
    groups = 1

    @property
    def dim_embd(self) -> int:
        return self.net.dim_embd

    @property
    def n_layers(self) -> int:
        return self.net.n_layers

    @property
    def codebooks(self) -> torch.Tensor:
        return self.net.quantize.embedding.weight.unsqueeze(0)

    def encode(self, x: torch.Tensor):
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
        return _blocks().adaptive_instance_normalization(quant, lq_feat)

    def decode(self, quantized: torch.Tensor, skips: Mapping[str, torch.Tensor], fidelity: float = 0.5) -> torch.Tensor:
        x = quantized
        fuse = self.net.fuse_convs_dict
        for i, block in enumerate(self.net.generator.blocks):
            x = block(x)
            size = self.generator_taps.get(i)
            if size is not None and fidelity > 0:
                x = fuse[size](skips[size], x, fidelity)
        return x


def _blocks():
    from .arch.iqpfr import spandrel_codeformer_blocks
    return spandrel_codeformer_blocks()


@dataclass
class LoadedRestorer:
    """A loaded restorer: ``codebook`` holds the lookup surface (CodeFormer/IQPFR) or None."""

    name: str
    architecture: str
    path: Path
    module: nn.Module                      # the spandrel model (or IQPFR) itself
    codebook: Optional[nn.Module]          # CodeFormerCodebook / IQPFR, or None for GFPGAN/RestoreFormer
    img_size: int
    supports_bfloat16: bool
    supports_half: bool
    descriptor: Any = None                 # spandrel ModelDescriptor when spandrel built it

    @property
    def has_trained_conditioning(self) -> bool:
        if self.architecture in QUALITY_BUILT_IN:
            return True
        return getattr(self.codebook, "quality_condition", None) is not None

    def run_whole(self, x01: torch.Tensor) -> torch.Tensor:
        """Non-codebook restorers: 0..1 in, 0..1 out, deterministic (StyleGAN noise buffers, not random)."""
        if self.architecture == "GFPGAN":
            return (self.module(x01 * 2 - 1, return_rgb=False, randomize_noise=False)[0] + 1) / 2
        if self.architecture == "RestoreFormer":
            return self.descriptor(x01)  # spandrel's call normalises itself
        raise FaceRefineError(f"{self.architecture} runs through the codebook lookup")


def load_restorer_file(path: Path, name: str = "", condition_path: Optional[Path] = None) -> LoadedRestorer:
    """Load a restorer checkpoint (auto-detected) on CPU, eval mode, no gradients on its weights."""
    path = Path(path)
    sd = canonical_state_dict(load_state_dict(path))
    arch = detect_architecture(sd)
    if arch is None:
        hint = " It is quality-conditioning weights: pass it as the conditioning file." if "to_film.weight" in \
            {k.split("quality_condition.")[-1] for k in sd} else ""
        raise WrongArchitectureError(
            f"{path.name} is not a face restorer we can load (expected one of {', '.join(SUPPORTED)}; "
            f"first keys: {list(sd)[:4]}).{hint}")
    if arch not in SUPPORTED:
        raise WrongArchitectureError(
            f"{path.name} is a spandrel '{arch}' model, not a face restorer; expected one of {', '.join(SUPPORTED)}")
    descriptor = None
    if arch in QUALITY_BUILT_IN:
        module = (IQPFRv2 if arch == "IQPFRv2" else IQPFR).from_file(path, sd)
        codebook = module
        img_size, bf16, half = module.img_size, True, True
    else:
        descriptor = _spandrel_load(sd, arch, path.name)
        module = descriptor.model
        codebook = CodeFormerCodebook(module) if arch == "CodeFormer" else None
        img_size, bf16, half = 512, descriptor.supports_bfloat16, descriptor.supports_half
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    loaded = LoadedRestorer(name or path.name, arch, path, module, codebook, img_size, bf16, half, descriptor)
    if condition_path is not None:
        attach_quality_condition(loaded, condition_path)
    return loaded


def attach_quality_condition(restorer: LoadedRestorer, path: Path) -> None:
    """Attach IQPFR quality-conditioning weights to a CodeFormer restorer."""
    if restorer.architecture != "CodeFormer":
        raise WrongArchitectureError(
            f"quality-conditioning files apply to CodeFormer restorers; {restorer.name} is {restorer.architecture}"
            + (" (IQPFR has its conditioning built in)" if restorer.architecture in QUALITY_BUILT_IN else ""))
    cb = restorer.codebook
    cond = load_quality_condition(path, cb.dim_embd, cb.n_layers, detect=detect_architecture)
    cond.eval()
    for p in cond.parameters():
        p.requires_grad_(False)
    device = next(cb.net.parameters()).device
    cb.quality_condition = cond.to(device)


def _spandrel_load(sd: dict, arch: str, file: str):
    from spandrel import ModelLoader
    install_extra_arches()
    try:
        return ModelLoader().load_from_state_dict(sd)
    except Exception as err:  # spandrel assumes full-size GFPGAN; other sizes are built below
        if arch == "GFPGAN":
            try:
                return _gfpgan_sized(sd)
            except Exception as err2:
                err = err2
        raise WrongArchitectureError(
            f"{file} looks like {arch} but spandrel could not load it: {str(err).splitlines()[0][:300]}") from err


def _gfpgan_sized(sd: dict):
    """GFPGANv1Clean (spandrel's class) with sizes read from the tensor shapes."""
    from spandrel import ImageModelDescriptor, SizeRequirements
    from spandrel.architectures.GFPGAN import GFPGANArch
    GFPGAN = gfpgan_class()
    n_rgb = len({k.split(".")[1] for k in sd if k.startswith("toRGB.")})
    out_size = 2 ** (n_rgb + 2)
    narrow = sd["conv_body_first.weight"].shape[0] / _gfpgan_first_channels(out_size)
    num_style_feat = sd["stylegan_decoder.style_mlp.1.weight"].shape[0]
    num_mlp = len({k.split(".")[2] for k in sd if k.startswith("stylegan_decoder.style_mlp.") and k.endswith(".weight")})
    log_size = int(math.log2(out_size))
    different_w = sd["final_linear.weight"].shape[0] == (log_size * 2 - 2) * num_style_feat
    sft_half = sd["condition_scale.0.2.weight"].shape[0] == sd["condition_scale.0.0.weight"].shape[0]
    model = GFPGAN(out_size=out_size, num_style_feat=num_style_feat, channel_multiplier=2, num_mlp=num_mlp,
                   input_is_latent=True, different_w=different_w, narrow=narrow, sft_half=sft_half)
    return ImageModelDescriptor(model, sd, architecture=GFPGANArch(), purpose="FaceSR", tags=["sized"],
                                supports_half=False, supports_bfloat16=True, scale=1, input_channels=3,
                                output_channels=3, size_requirements=SizeRequirements(minimum=out_size),
                                call_fn=lambda m, image: m(image)[0])


def gfpgan_class():
    """spandrel's GFPGANv1Clean class: ``GFPGAN`` from spandrel 0.4, ``GFPGANv1Clean`` in 0.3 (A1111's pin)."""
    import spandrel.architectures.GFPGAN as module
    return getattr(module, "GFPGAN", None) or module.GFPGANv1Clean


def _gfpgan_first_channels(out_size: int) -> float:
    """conv_body_first channels at narrow=1 for an output size (channel_multiplier 2, unet half width)."""
    base = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}
    return base[out_size] * 0.5
