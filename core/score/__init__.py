"""No-reference image quality (NR-IQA) of faces and images.

    metric = get_metric("face-iqa", "cpu")         # default ('auto'); or face-niqe, piqe, topiq_nr-face, musiq, ...
    crops = score_face_crops(face_crops, metric)   # FaceCrops with a QualityScore per face
    scores = score_images(images, metric)          # images [B,H,W,3] 0..1 -> [QualityScore]
    critic = get_critic("face-iqa", "cuda")         # x [N,3,H,W] 0..1 -> Tensor[N], higher = better, with gradients
"""
from __future__ import annotations

from typing import Callable, Union

import torch

from ...errors import FaceRefineError, ImageInputError
from ..types import FaceCrops, QualityScore
from .metrics import (AUTO, FACE_IQA, FACE_NIQE, METRICS, Metric, MetricInfo, canonical_name, clear_cache,
                      default_metric, get_info, get_metric, metric_names, normalize)

OFFLINE_METRICS = tuple(name for name, info in METRICS.items() if info.offline)

MetricLike = Union[str, Metric]


def _as_metric(metric: MetricLike, device=None, face_input: bool = True) -> Metric:
    return metric if isinstance(metric, Metric) else get_metric(metric, device, face_input=face_input)


def score_face_crops(face_crops: FaceCrops, metric: MetricLike = AUTO, device=None) -> FaceCrops:
    """New FaceCrops whose faces carry this metric's QualityScore (replacing an older one of the same metric)."""
    if not isinstance(face_crops, FaceCrops):
        raise FaceRefineError(f"score_face_crops needs FACE_CROPS, got {type(face_crops).__name__}")
    if face_crops.is_empty:
        return face_crops
    m = _as_metric(metric, device, face_input=True)
    scores = m.scores(face_crops.crops)
    return face_crops.with_faces(tuple(f.with_quality(s) for f, s in zip(face_crops.faces, scores)))


def score_images(images: torch.Tensor, metric: MetricLike = AUTO, device=None) -> list[QualityScore]:
    """Whole-image scores of images [B,H,W,3] (ComfyUI IMAGE layout) or [H,W,3], RGB 0..1."""
    if not isinstance(images, torch.Tensor):
        raise ImageInputError(f"expected an image tensor, got {type(images).__name__}")
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ImageInputError(f"expected IMAGE [B,H,W,3], got {tuple(images.shape)}")
    x = images[..., :3] if images.shape[-1] >= 3 else images.expand(*images.shape[:3], 3)
    m = _as_metric(metric, device, face_input=False)
    return m.scores(x.permute(0, 3, 1, 2).contiguous())


def get_critic(name: str = AUTO, device=None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Differentiable quality: x [N,3,H,W] RGB 0..1 -> Tensor[N], higher = better.

    The value is the metric's normalised score without clipping, so gradients never vanish
    at the ends of the range. Raises FaceRefineError for metrics without useful gradients (piqe, brisque).
    """
    m = get_metric(name, device)
    if not m.info.differentiable:
        usable = ", ".join(n for n, i in METRICS.items() if i.differentiable)
        raise FaceRefineError(f"metric '{m.name}' has no useful gradients; use one of: {usable}")
    return m.critic


def time_per_face(name: str, size: int = 512, faces: int = 4, repeats: int = 3, device="cpu",
                  critic: bool = False) -> dict:
    """Median seconds to score one size² face with a metric (for ``bench``); ``critic``: forward+backward."""
    import statistics
    import time

    m = get_metric(name, device)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(faces, 3, size, size, generator=gen)

    def once() -> None:
        if critic:
            xx = x.to(m.device).requires_grad_(True)
            m.critic(xx).sum().backward()
        else:
            m.raw(x)
        if m.device.type == "cuda":
            torch.cuda.synchronize(m.device)

    once()  # warm-up (weights, caches)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    per_face = statistics.median(times) / faces
    return {"metric": m.name, "size": size, "faces": faces, "device": str(m.device), "critic": critic,
            "seconds_per_face": per_face, "ms_per_face": round(per_face * 1e3, 2)}


__all__ = ["AUTO", "FACE_IQA", "FACE_NIQE", "METRICS", "OFFLINE_METRICS", "Metric", "MetricInfo", "QualityScore",
           "canonical_name", "clear_cache", "default_metric", "get_critic", "get_info", "get_metric",
           "metric_names", "normalize", "score_face_crops", "score_images", "time_per_face"]
