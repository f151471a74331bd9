"""Identity networks for the refine step.

- ArcFace IR-SE50 (facexlib's own ``Backbone`` class, weights ``recognition_arcface_ir_se50.pth``
  through the registry entry "arcface") embeds FFHQ-aligned face crops.
- The Identity Recovery Network (IRN) predicts the clean-face ArcFace embedding from the
  degraded face (its ArcFace embedding plus the degraded latent).
- The latent mask picks the latent positions that receive identity gradients.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

ARCFACE_ARCH = "ArcFace-IR-SE50"
RECOVERY_ARCH = "FaceRefine-IdentityRecovery"
EMBED_DIM = 512

# The ArcFace 112x112 template mapped into the FFHQ-aligned crop (fractions of the crop side):
# eye distance 35.2 px (ArcFace) vs 125.9 px (FFHQ 512) gives a 400 px box at (56, 55).
_ARCFACE_BOX = (56.2 / 512, 55.3 / 512, 456.2 / 512, 455.3 / 512)  # x0, y0, x1, y1


def build_arcface_backbone() -> nn.Module:
    from facexlib.recognition.arcface_arch import Backbone
    return Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se")


class ArcFaceEmbedder(nn.Module):
    """FFHQ-aligned crops [N,3,S,S] RGB 0..1 -> unit ArcFace embeddings [N,512] (differentiable)."""

    def __init__(self, backbone: Optional[nn.Module] = None):
        super().__init__()
        self.backbone = backbone if backbone is not None else build_arcface_backbone()
        self.eval()

    def train(self, mode: bool = True):  # BatchNorm/Dropout stay frozen: this is a fixed judge
        return super().train(False)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        s_h, s_w = crops.shape[-2:]
        x0, y0, x1, y1 = _ARCFACE_BOX
        face = crops[..., round(y0 * s_h):round(y1 * s_h), round(x0 * s_w):round(x1 * s_w)]
        face = F.interpolate(face, size=(112, 112), mode="bilinear", align_corners=False, antialias=True)
        dtype = next(self.backbone.parameters()).dtype
        face = (face * 2 - 1).to(dtype).contiguous(memory_format=torch.contiguous_format)
        return F.normalize(self.backbone(face).float(), dim=1)


def load_arcface(name_or_path: str = "arcface", device: str | torch.device = "cpu") -> ArcFaceEmbedder:
    """ArcFace IR-SE50 from the registry (folder 'facedetection') or a path."""
    from ..loading import load_into, load_state_dict
    from ..locate import resolve
    path = resolve(name_or_path, "facedetection")
    backbone = build_arcface_backbone()
    load_into(backbone, load_state_dict(path), ARCFACE_ARCH, str(path))
    return ArcFaceEmbedder(backbone).to(device)


@dataclass(frozen=True)
class RecoveryConfig:
    cond_channels: int = 256   # channels of the degraded latent
    latent_size: int = 16      # latent grid side (for the mask)
    hidden: int = 1024
    mask_init: float = 0.0     # initial mask logit where no region prior is given

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "RecoveryConfig":
        raw = json.loads(text)
        return RecoveryConfig(**{k: v for k, v in raw.items() if k in RecoveryConfig.__dataclass_fields__})


class IdentityRecoveryNetwork(nn.Module):
    """Predicts the clean identity embedding from the LQ embedding and the degraded latent."""

    def __init__(self, config: RecoveryConfig = RecoveryConfig()):
        super().__init__()
        self.config = config
        self.cond = nn.Sequential(nn.Conv2d(config.cond_channels, 128, 3, padding=1), nn.SiLU(),
                                  nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.mlp = nn.Sequential(nn.Linear(EMBED_DIM + 128 * 16, config.hidden), nn.SiLU(),
                                 nn.Linear(config.hidden, config.hidden), nn.SiLU(),
                                 nn.Linear(config.hidden, EMBED_DIM))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, lq_embedding: torch.Tensor, lq_latent: torch.Tensor) -> torch.Tensor:
        h = torch.cat([lq_embedding.float(), self.cond(lq_latent.float())], dim=1)
        return F.normalize(lq_embedding.float() + self.mlp(h), dim=1)


class LatentMask(nn.Module):
    """Learnable per-position logits over the latent grid; ``hard()`` is used at inference."""

    def __init__(self, latent_size: int = 16, init: float = 0.0):
        super().__init__()
        self.logits = nn.Parameter(torch.full((1, 1, latent_size, latent_size), float(init)))

    def soft(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def hard(self, threshold: float = 0.5) -> torch.Tensor:
        return (self.soft() > threshold).to(self.logits.dtype)


class IdentityModel(nn.Module):
    """The FACEREFINE_ID_MODEL handle: ArcFace judge + optional trained IRN and latent mask."""

    def __init__(self, arcface: ArcFaceEmbedder, recovery: Optional[IdentityRecoveryNetwork] = None,
                 mask: Optional[LatentMask] = None, name: str = "arcface"):
        super().__init__()
        self.arcface = arcface
        self.recovery = recovery
        self.mask = mask
        self.name = name

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        return self.arcface(crops)

    def recover(self, lq_crops: torch.Tensor, lq_latent: torch.Tensor) -> torch.Tensor:
        if self.recovery is None:
            raise ValueError("this identity model has no trained Identity Recovery Network")
        return self.recovery(self.arcface(lq_crops), lq_latent)


def save_identity_recovery(model: IdentityModel, path) -> "object":
    """Writes the IRN and latent mask (not ArcFace, which has its own file)."""
    from ..loading import save_safetensors
    if model.recovery is None:
        raise ValueError("nothing to save: the identity model has no recovery network")
    sd = {f"recovery.{k}": v for k, v in model.recovery.state_dict().items()}
    if model.mask is not None:
        sd.update({f"mask.{k}": v for k, v in model.mask.state_dict().items()})
    return save_safetensors(sd, path, metadata={"architecture": RECOVERY_ARCH,
                                                "config": model.recovery.config.to_json()})


def load_identity_recovery(path) -> tuple[IdentityRecoveryNetwork, Optional[LatentMask]]:
    from safetensors import safe_open

    from ...errors import WrongArchitectureError
    from ..loading import load_into, load_state_dict
    sd = load_state_dict(path)
    meta = {}
    if str(path).endswith(".safetensors"):
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    if meta.get("architecture") != RECOVERY_ARCH or "config" not in meta:
        raise WrongArchitectureError(f"{path} is not a FaceRefine identity recovery file "
                                     f"(expected architecture {RECOVERY_ARCH} in its safetensors metadata)")
    cfg = RecoveryConfig.from_json(meta["config"])
    recovery = IdentityRecoveryNetwork(cfg)
    load_into(recovery, {k[len("recovery."):]: v for k, v in sd.items() if k.startswith("recovery.")},
              RECOVERY_ARCH, str(path))
    mask = None
    mask_sd = {k[len("mask."):]: v for k, v in sd.items() if k.startswith("mask.")}
    if mask_sd:
        mask = LatentMask(cfg.latent_size)
        load_into(mask, mask_sd, RECOVERY_ARCH + " latent mask", str(path))
    return recovery, mask


def load_id_model(arcface: str = "arcface", recovery: Optional[str] = None,
                  device: str | torch.device = "cpu") -> IdentityModel:
    """ArcFace by registry name/path, plus an optional IRN + mask file (name or path)."""
    from ..locate import resolve
    embedder = load_arcface(arcface, device)
    irn = mask = None
    if recovery:
        irn, mask = load_identity_recovery(resolve(recovery, "facerefine"))
    return IdentityModel(embedder, irn, mask, name=str(arcface)).to(device).eval()
