"""Identity networks for the refine step.

- ArcFace IR-SE50 (facexlib's own ``Backbone`` class, weights ``recognition_arcface_ir_se50.pth``
  through the registry entry "arcface", a download) embeds FFHQ-aligned face crops.
- dlib's face-recognition ResNet (``models/arch/dlib_resnet.py``, weights embedded in ``weights/``, CC0)
  is used when ArcFace is absent (``id_model="auto"``). Its 150x150 chip is cut from each crop inside
  the autograd graph by a similarity transform from the crop's 5 landmarks, so gradients reach the latent.
- The Identity Recovery Network (IRN) predicts the identity network's embedding of the clean face from
  the degraded face (that network's embedding of it plus the degraded latent).
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
DLIB_ARCH = "dlib-face-recognition-resnet-v1"
EMBED_DIM = 512
ID_MODEL_CHOICES = ("auto", "arcface", "dlib")
# The FFHQ 512 template of the crop step (facexlib) as crop fractions: the landmarks of a crop whose own are unknown.
FFHQ_TEMPLATE = torch.tensor([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                              [201.26117, 371.41043], [313.08905, 371.15118]]) / 512.0
# Where FaceRefine's 5 landmarks (eye L, eye R, nose tip, mouth L, mouth R) fall in dlib's 150x150 chip
# (get_face_chip_details(shape, 150, padding=0.25)): mean over the London training identities, measured
# by lab/fit_dlib_chip_template.py on 82 faces (per-face spread 0.8 px at the eyes, up to 2.7 px at the mouth).
DLIB_CHIP_LANDMARKS = (
    (45.69, 44.82), (101.18, 44.72), (73.64, 73.61), (51.28, 104.96), (96.24, 104.76))

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


def similarity_fit(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity transforms [N,2,3] mapping points src [N,K,2] onto dst [N,K,2]."""
    src, dst = src.double(), dst.double()
    ms, md = src.mean(1, keepdim=True), dst.mean(1, keepdim=True)
    s, d = src - ms, dst - md
    den = (s ** 2).sum(dim=(1, 2)).clamp_min(1e-12)
    a = (s * d).sum(dim=(1, 2)) / den                                              # scale * cos
    b = (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]).sum(1) / den             # scale * sin
    rot = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], 1)      # [N,2,2]
    t = md.squeeze(1) - (rot @ ms.squeeze(1).unsqueeze(-1)).squeeze(-1)
    return torch.cat([rot, t.unsqueeze(-1)], dim=2).float()


class DlibEmbedder(nn.Module):
    """FFHQ-aligned crops [N,3,S,S] RGB 0..1 (+ their 5 landmarks as crop fractions [N,5,2]) -> unit dlib
    embeddings [N,128]. The chip is cut inside the graph (antialiased resize + bilinear grid_sample)."""

    def __init__(self, net: Optional[nn.Module] = None):
        super().__init__()
        from .dlib_resnet import DlibFaceRecognitionResNet
        self.net = net if net is not None else DlibFaceRecognitionResNet()
        self.register_buffer("chip_landmarks", torch.tensor(DLIB_CHIP_LANDMARKS, dtype=torch.float32),
                             persistent=False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)

    def chips(self, crops: torch.Tensor, landmarks: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The 150x150 dlib chips [N,3,150,150] of the crops (differentiable w.r.t. crops)."""
        from .dlib_resnet import DLIB_CHIP_SIZE
        n, _, s_h, s_w = crops.shape
        if landmarks is None:
            landmarks = FFHQ_TEMPLATE.expand(n, 5, 2)
        lm = torch.as_tensor(landmarks, dtype=torch.float32).reshape(-1, 5, 2).cpu()
        if lm.shape[0] == 1 and n > 1:
            lm = lm.expand(n, 5, 2)
        chip = DLIB_CHIP_SIZE
        # crop -> chip similarity; its scale decides how much to shrink the crop first (no aliasing)
        fwd = similarity_fit(lm * torch.tensor([s_w, s_h]), self.chip_landmarks.cpu().expand(n, 5, 2))
        scale = float(fwd[:, :, :2].det().abs().sqrt().max())
        src = crops.float()
        if scale < 0.8:
            size = (max(8, round(s_h * scale)), max(8, round(s_w * scale)))
            src = F.interpolate(src, size=size, mode="bilinear", align_corners=False, antialias=True)
        # chip pixel -> crop pixel, then to grid_sample's normalised coordinates (align_corners=False)
        inv = similarity_fit(self.chip_landmarks.cpu().expand(n, 5, 2), lm * torch.tensor([s_w, s_h]))
        to_norm_in = torch.tensor([[2.0 / s_w, 0, 1.0 / s_w - 1], [0, 2.0 / s_h, 1.0 / s_h - 1], [0, 0, 1]])
        from_norm_out = torch.tensor([[chip / 2.0, 0, chip / 2.0 - 0.5], [0, chip / 2.0, chip / 2.0 - 0.5],
                                      [0, 0, 1]])
        inv3 = torch.cat([inv, torch.tensor([[[0.0, 0.0, 1.0]]]).expand(n, 1, 3)], dim=1)
        theta = (to_norm_in @ inv3 @ from_norm_out)[:, :2].to(crops.device)
        grid = F.affine_grid(theta, [n, 3, chip, chip], align_corners=False)
        return F.grid_sample(src, grid.to(src.dtype), mode="bilinear", padding_mode="border", align_corners=False)

    def forward(self, crops: torch.Tensor, landmarks: Optional[torch.Tensor] = None) -> torch.Tensor:
        return F.normalize(self.net(self.chips(crops, landmarks)).float(), dim=1)


def load_dlib(name_or_path: str = "dlib-face-recognition", device: str | torch.device = "cpu") -> DlibEmbedder:
    """dlib's face-recognition ResNet from the embedded weights (registry 'dlib-face-recognition') or a path."""
    from ..loading import load_into, load_state_dict
    from ..locate import resolve
    from .dlib_resnet import DlibFaceRecognitionResNet
    path = resolve(name_or_path, "facerefine")
    net = DlibFaceRecognitionResNet()
    sd = {k: v.float() for k, v in load_state_dict(path).items()}
    load_into(net, sd, DLIB_ARCH, str(path))
    return DlibEmbedder(net).to(device)


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
    embed_dim: int = EMBED_DIM  # 512 for ArcFace, 128 for dlib
    cond_transform: str = "none"  # "asinh": read heavy-tailed degraded latents (IQPFRv2's) through asinh

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
        self.mlp = nn.Sequential(nn.Linear(config.embed_dim + 128 * 16, config.hidden), nn.SiLU(),
                                 nn.Linear(config.hidden, config.hidden), nn.SiLU(),
                                 nn.Linear(config.hidden, config.embed_dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, lq_embedding: torch.Tensor, lq_latent: torch.Tensor) -> torch.Tensor:
        lq_latent = lq_latent.float()
        if self.config.cond_transform == "asinh":
            lq_latent = torch.asinh(lq_latent)
        h = torch.cat([lq_embedding.float(), self.cond(lq_latent)], dim=1)
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
    """The FACEREFINE_ID_MODEL handle: an identity embedder (ArcFace or dlib's ResNet) + optional trained
    IRN and latent mask. ``arcface`` holds the embedder whichever network it is (historical name)."""

    def __init__(self, arcface: nn.Module, recovery: Optional[IdentityRecoveryNetwork] = None,
                 mask: Optional[LatentMask] = None, name: str = "arcface"):
        super().__init__()
        self.arcface = arcface
        self.recovery = recovery
        self.mask = mask
        self.name = name

    @property
    def network(self) -> str:
        """'dlib' or 'arcface': which recogniser embeds the faces."""
        return "dlib" if isinstance(self.arcface, DlibEmbedder) else "arcface"

    @property
    def uses_landmarks(self) -> bool:
        return isinstance(self.arcface, DlibEmbedder)

    def embed(self, crops: torch.Tensor, landmarks: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Unit embeddings of FFHQ-aligned crops; ``landmarks`` [N,5,2] in crop fractions (used by dlib's
        chip alignment; ArcFace reads a fixed box of the crop)."""
        if self.uses_landmarks:
            return self.arcface(crops, landmarks)
        return self.arcface(crops)

    def recover(self, lq_crops: torch.Tensor, lq_latent: torch.Tensor,
                landmarks: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.recovery is None:
            raise ValueError("this identity model has no trained Identity Recovery Network")
        return self.recovery(self.embed(lq_crops, landmarks), lq_latent)


def save_identity_recovery(model: IdentityModel, path) -> "object":
    """Writes the IRN and latent mask (not the identity network, which has its own file)."""
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


def arcface_available() -> bool:
    """ArcFace weights are on disk (no download is tried)."""
    from ...errors import WeightsNotFoundError
    from ..locate import resolve
    try:
        resolve("arcface", "facedetection", download=False)
        return True
    except WeightsNotFoundError:
        return False


def resolve_id_model(name: Optional[str]) -> str:
    """'auto' -> 'arcface' when its weights are on disk, else 'dlib' (embedded); other values unchanged."""
    key = str(name or "auto").strip()
    if key.lower() == "auto":
        return "arcface" if arcface_available() else "dlib"
    return key


def _network_of_file(path) -> str:
    """'dlib' or 'arcface' from a weights file's metadata or keys; a clear error naming the file otherwise."""
    from ...errors import WrongArchitectureError
    from ..loading import load_state_dict
    if str(path).lower().endswith(".safetensors"):
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                arch = (f.metadata() or {}).get("architecture")
        except Exception:  # corrupt: load_state_dict below gives the readable error
            arch = None
        if arch == DLIB_ARCH:
            return "dlib"
        if arch == ARCFACE_ARCH:
            return "arcface"
    keys = set(load_state_dict(path))
    if "stem.weight" in keys and "fc.weight" in keys:
        return "dlib"
    if any(k.startswith(("input_layer.", "body.")) for k in keys):
        return "arcface"
    raise WrongArchitectureError(
        f"{path} is not an identity network: expected {ARCFACE_ARCH} (recognition_arcface_ir_se50.pth) or "
        f"{DLIB_ARCH} (dlib_face_recognition_resnet.safetensors); its first keys are {sorted(keys)[:5]}")


def load_embedder(name_or_path: Optional[str] = "auto", device: str | torch.device = "cpu") -> tuple[nn.Module, str]:
    """The identity embedder and its label: 'auto' | 'arcface' | 'dlib' | a registry name | a file path."""
    from pathlib import Path
    key = resolve_id_model(name_or_path)
    low = key.lower()
    if low in ("dlib", "dlib-face-recognition"):
        return load_dlib("dlib-face-recognition", device), "dlib"
    if low == "arcface":
        return load_arcface("arcface", device), "arcface"
    from ..locate import resolve
    from ..registry import get_spec
    spec = get_spec(key)
    if spec is not None and spec.architecture == DLIB_ARCH:
        return load_dlib(key, device), "dlib"
    if spec is not None:
        return load_arcface(key, device), key
    path = resolve(key, "facedetection") if not Path(key).expanduser().is_file() else Path(key).expanduser()
    if _network_of_file(path) == "dlib":
        return load_dlib(str(path), device), str(path)
    return load_arcface(str(path), device), str(path)


def load_id_model(name_or_path: Optional[str] = "auto", device: str | torch.device = "cpu",
                  recovery: Optional[str] = None) -> IdentityModel:
    """The identity network by choice ('auto': ArcFace if its weights are on disk, else dlib's embedded ResNet;
    'arcface'; 'dlib'; a registry name or a weights path), plus an optional IRN + mask file (name or path)."""
    from ...errors import WrongArchitectureError
    from ..locate import resolve
    embedder, label = load_embedder(name_or_path, device)
    irn = mask = None
    if recovery:
        rec_path = resolve(recovery, "facerefine")
        irn, mask = load_identity_recovery(rec_path)
        dim = 128 if isinstance(embedder, DlibEmbedder) else EMBED_DIM
        if irn.config.embed_dim != dim:
            raise WrongArchitectureError(
                f"{rec_path} was trained for {irn.config.embed_dim}-d embeddings but the identity network "
                f"'{label}' gives {dim}-d ones; load the recovery file trained with that network")
    return IdentityModel(embedder, irn, mask, name=label).to(device).eval()
