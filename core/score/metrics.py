"""The metric registry: which NR-IQA metrics exist, how their raw values map to 0..1.

Normalisation: ``normalized = clip((raw - lo) / (hi - lo), 0, 1)`` for higher-better
metrics and ``clip((hi - raw) / (hi - lo), 0, 1)`` for lower-better ones, with the
documented range (lo, hi) below (docs/quality.md explains each choice).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional

import torch

from ...errors import FaceRefineError, ImageInputError
from ..types import QualityScore
from . import pyiqa_weights

FACE_NIQE = "face-niqe"
FACE_IQA = "face-iqa"          # the default critic (docs/quality.md, critic bench)
AUTO = "auto"


@dataclass(frozen=True)
class MetricInfo:
    name: str
    lower_better: bool
    range: tuple[float, float]   # raw values mapped to the ends of 0..1 (lo, hi)
    offline: bool                # works with files shipped in the package / no weights
    differentiable: bool         # usable as a critic with useful gradients
    description: str
    pyiqa_name: Optional[str] = None


METRICS: dict[str, MetricInfo] = {m.name: m for m in (
    MetricInfo(FACE_IQA, False, (0.0, 10.0), True, True,
               "face damage critic fitted on London-set training faces: blur, noise, blocks/mosaic, "
               "over-smoothing, colour blotches, ringing, ghosting (ours, offline, differentiable, default)"),
    MetricInfo(FACE_NIQE, True, (0.0, 20.0), True, True,
               "NIQE-style NSS model fitted on clean London-set faces (ours, offline, differentiable)"),
    MetricInfo("topiq_nr-face", False, (0.0, 1.0), False, True,
               "TOPIQ trained on the CGFIQA face-quality set (pyiqa; face-specific)", "topiq_nr-face"),
    MetricInfo("musiq", False, (0.0, 100.0), False, True, "MUSIQ, KonIQ-10k MOS scale (pyiqa)", "musiq"),
    MetricInfo("clipiqa", False, (0.0, 1.0), False, True, "CLIP-IQA, prompt-pair probability (pyiqa)", "clipiqa"),
    MetricInfo("maniqa", False, (0.0, 1.0), False, True, "MANIQA, KonIQ-10k (pyiqa)", "maniqa"),
    MetricInfo("niqe", True, (0.0, 20.0), False, True, "NIQE with the original natural-image model (pyiqa)",
               "niqe"),
    MetricInfo("brisque", True, (0.0, 100.0), False, False, "BRISQUE SVR (pyiqa)", "brisque"),
    MetricInfo("piqe", True, (0.0, 100.0), True, False, "PIQE block-distortion score (pyiqa, no weights)", "piqe"),
)}


# learned networks run under fp16 autocast on CUDA; the NSS metrics need full precision
_AUTOCAST_OK = ("topiq_nr-face", "musiq", "clipiqa", "maniqa")


def metric_names() -> list[str]:
    return list(METRICS)


def get_info(name: str) -> MetricInfo:
    key = canonical_name(name)
    return METRICS[key]


def canonical_name(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    aliases = {"faceniqe": FACE_NIQE, "face-niqe": FACE_NIQE, "topiq-nr-face": "topiq_nr-face",
               "faceiqa": FACE_IQA, "face-iqa": FACE_IQA}
    key = aliases.get(key, key)
    if key == AUTO:
        return default_metric()
    if key not in METRICS:
        raise FaceRefineError(f"unknown quality metric '{name}'. Choose one of: {', '.join(METRICS)} (or 'auto')")
    return key


def default_metric() -> str:
    """face-iqa: the critic that passes the critic bench (lab/critic_bench.py, docs/quality.md).

    Until issue 18 'auto' meant topiq_nr-face when its weights were on disk, else face-niqe; face-niqe
    rated 8-px mosaics and blur above their sources, and topiq_nr-face was never measured on the bench
    (its weights are not available offline), so both are now opt-in by name. Without the face-iqa file (a
    checkout that lost weights/) it falls back to face-niqe."""
    from ...models.locate import resolve
    from ...errors import WeightsNotFoundError
    try:
        resolve(FACE_IQA, "facerefine", download=False)
        return FACE_IQA
    except WeightsNotFoundError:
        return FACE_NIQE


def normalize(info: MetricInfo, raw: torch.Tensor, clip: bool = True) -> torch.Tensor:
    lo, hi = info.range
    value = (hi - raw) / (hi - lo) if info.lower_better else (raw - lo) / (hi - lo)
    return value.clamp(0.0, 1.0) if clip else value


class Metric:
    """A loaded metric: ``raw(x)`` [N] scores of x [N,3,H,W] RGB 0..1, ``normalized(x)`` in 0..1."""

    def __init__(self, info: MetricInfo, module: torch.nn.Module, device: torch.device,
                 face_input: bool = True, batch_size: int = 8):
        self.info = info
        self.module = module
        self.device = device
        self.batch_size = batch_size
        self.face_input = face_input

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def lower_better(self) -> bool:
        return self.info.lower_better

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x.to(self.device, torch.float32))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.reshape(x.shape[0], -1)[:, 0].float()

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        x = check_batch(x)
        outs = []
        with torch.inference_mode():
            for i in range(0, x.shape[0], self.batch_size):
                chunk = x[i:i + self.batch_size]
                if self.device.type == "cuda" and self.info.name in _AUTOCAST_OK:
                    with torch.autocast("cuda", dtype=torch.float16):
                        outs.append(self._forward(chunk).float().cpu())
                else:
                    outs.append(self._forward(chunk).cpu())
        return torch.cat(outs) if outs else torch.zeros(0)

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(self.info, self.raw(x))

    def scores(self, x: torch.Tensor) -> list[QualityScore]:
        raw = self.raw(x)
        norm = normalize(self.info, raw)
        return [QualityScore(self.info.name, float(r), float(n), self.info.lower_better) for r, n in zip(raw, norm)]

    def critic(self, x: torch.Tensor) -> torch.Tensor:
        """Unclipped normalised score with gradients to x (higher = better), on x's device."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ImageInputError(f"critic takes [N,3,H,W], got {tuple(x.shape)}")
        with torch.inference_mode(False), torch.enable_grad():
            out = self.module(x.to(self.device).float())
            if isinstance(out, (tuple, list)):
                out = out[0]
            out = out.reshape(x.shape[0], -1)[:, 0].float()
            return normalize(self.info, out, clip=False).to(x.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.raw(x)

    def __repr__(self) -> str:
        return f"Metric({self.info.name}, device={self.device})"


def check_batch(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ImageInputError(f"quality metrics take RGB batches [N,3,H,W], got {shape}")
    if x.shape[-1] < 32 or x.shape[-2] < 32:
        raise ImageInputError(f"image {x.shape[-2]}x{x.shape[-1]} is too small to score (minimum 32x32)")
    x = x.float()
    if not torch.isfinite(x).all():
        raise ImageInputError("image contains NaN or infinite values")
    return x.clamp(0, 1)


# ---------------------------------------------------------------- loading
_CACHE: dict[tuple[str, str, bool], Metric] = {}
_LOCK = threading.Lock()


def _device(device) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def get_metric(name: str = AUTO, device=None, face_input: bool = True) -> Metric:
    """Load (once) and return a metric. ``face_input``: inputs are already aligned face crops."""
    pyiqa_weights.prepare_offline_env()
    key_name = canonical_name(name)
    dev = _device(device)
    key = (key_name, str(dev), face_input)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _build(METRICS[key_name], dev, face_input)
        return _CACHE[key]


def _build(info: MetricInfo, device: torch.device, face_input: bool) -> Metric:
    if info.name == FACE_NIQE:
        from .face_niqe import load_face_niqe
        return Metric(info, load_face_niqe().to(device).eval(), device, face_input)
    if info.name == FACE_IQA:
        from .face_iqa import load_face_iqa
        return Metric(info, load_face_iqa().to(device).eval(), device, face_input)
    found = pyiqa_weights.require_files(info.name)
    kwargs = {}
    if info.name == "topiq_nr-face":
        # the checkpoint holds the whole network. pyiqa's own face alignment (facexlib RetinaFace +
        # ParseNet downloads) stays off: FACE_CROPS are aligned already; whole images are scored as they are
        kwargs.update(backbone_pretrain=False, align_crop_face=False)
    try:
        import pyiqa
        with pyiqa_weights.pyiqa_sources(found, info.name) as sources:  # never patches torch.load
            model = pyiqa.create_metric(info.pyiqa_name, device=device, **kwargs, **sources)
    except FaceRefineError:
        raise
    except Exception as err:  # noqa: BLE001 - third-party loader: report, never crash the host
        hint = ""
        if info.name in pyiqa_weights.PYIQA_HF_BACKBONES:
            hint = (f" It also needs the backbone '{pyiqa_weights.PYIQA_HF_BACKBONES[info.name]}' in the "
                    f"Hugging Face cache.")
        raise FaceRefineError(f"could not load quality metric '{info.name}' through pyiqa: "
                              f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}.{hint} "
                              f"The offline metrics 'face-niqe' and 'piqe' need no downloads.") from err
    net = model.net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return Metric(info, net, device, face_input)


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()
