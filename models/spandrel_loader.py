"""spandrel (+ spandrel_extra_arches) as the loader of community restorer weights, spandrel 0.3 and 0.4.

spandrel 0.3.4 is AUTOMATIC1111's pin: no ``ignore_duplicates``, GFPGAN's class named ``GFPGANv1Clean``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional

import torch

from ..errors import WrongArchitectureError
from .cache import cached


def install_extra_arches() -> None:
    """Add spandrel_extra_arches (CodeFormer) to spandrel's registry once; ComfyUI may have done it already."""
    cached("spandrel", "extra_arches", _install_extra_arches)


def _install_extra_arches() -> bool:
    from spandrel import MAIN_REGISTRY
    from .arch.iqpfr import quiet_dependency_warnings
    with quiet_dependency_warnings():  # its CodeFormer uses @torch.jit.script (FutureWarning on every run)
        from spandrel_extra_arches import EXTRA_REGISTRY
    # spandrel 0.3 has no ignore_duplicates: add only what is not there yet
    MAIN_REGISTRY.add(*[support for support in EXTRA_REGISTRY if support.architecture.id not in MAIN_REGISTRY])
    return True


def canonical_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """RestoreFormer++ Lightning checkpoints keep the generator under 'vqvae.' next to loss weights."""
    if any(k.startswith("vqvae.") for k in sd) and not any(k.startswith("encoder.") for k in sd):
        return {k[len("vqvae."):]: v for k, v in sd.items() if k.startswith("vqvae.")}
    return dict(sd)


def spandrel_architecture(sd: Mapping[str, torch.Tensor]) -> Optional[str]:
    """The id of the first spandrel architecture that detects the state dict, or None."""
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


def spandrel_load(sd: dict, architecture: str, file: str, fallback: Optional[Callable[[dict], Any]] = None):
    """spandrel's ModelDescriptor for the state dict; ``fallback(sd)`` builds what spandrel cannot (sizes)."""
    from spandrel import ModelLoader
    install_extra_arches()
    try:
        return ModelLoader().load_from_state_dict(sd)
    except Exception as err:
        if fallback is not None:
            try:
                return fallback(sd)
            except Exception as err2:
                err = err2
        why = str(err).splitlines()[0][:300]
        raise WrongArchitectureError(f"{file} looks like {architecture} but spandrel could not load it: {why}") from err


def gfpgan_sized(sd: dict):
    """GFPGANv1Clean (spandrel's class) with sizes read from the tensor shapes (spandrel assumes full size)."""
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


__all__ = ["canonical_state_dict", "gfpgan_class", "gfpgan_sized", "install_extra_arches", "spandrel_architecture",
           "spandrel_load"]
