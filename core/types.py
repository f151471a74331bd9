"""Data passed between the pipeline steps: detections, FACE_CROPS and FACE_LATENT.

Steps never mutate their inputs; they return new objects via ``replace``.
Tensors stay on whatever device produced them (no numpy round trips).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch


@dataclass(frozen=True)
class QualityScore:
    """One NR-IQA result. ``normalized`` is 0..1, higher = better."""

    metric: str
    raw: float
    normalized: float
    lower_better: bool


@dataclass
class RawDetections:
    """Detections of one image: boxes [n,4], scores [n], landmarks [n,5,2] (float32, CPU)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    landmarks: torch.Tensor

    @staticmethod
    def empty() -> "RawDetections":
        return RawDetections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 5, 2))


@dataclass(frozen=True)
class FaceInfo:
    """Geometry and metadata of one detected face."""

    affine: np.ndarray            # 2x3, source image pixels -> crop pixels
    inverse_affine: np.ndarray    # 2x3, crop pixels -> source image pixels
    landmarks: np.ndarray         # 5x2 in source pixels: eye L, eye R, nose, mouth L, mouth R
    bbox: tuple[float, float, float, float]  # x0, y0, x1, y1 in source pixels
    score: float                  # detector confidence
    image_index: int              # index of the source image in the batch
    image_size: tuple[int, int]   # (height, width) of the source image
    quality: tuple[QualityScore, ...] = ()

    def with_quality(self, score: QualityScore) -> "FaceInfo":
        kept = tuple(q for q in self.quality if q.metric != score.metric)
        return dataclasses.replace(self, quality=kept + (score,))


@dataclass(frozen=True)
class FaceCrops:
    """Every face found in a batch of images.

    crops: float32 [N, 3, S, S] RGB in 0..1 (aligned to the FFHQ template).
    parsing_masks: optional float [N, S, S], 1 = face region to paste.
    """

    crops: torch.Tensor
    faces: tuple[FaceInfo, ...]
    crop_size: int
    parsing_masks: Optional[torch.Tensor] = None
    history: tuple[str, ...] = ()  # steps that produced these crops, e.g. ("crop", "lookup:codeformer")

    def __post_init__(self) -> None:
        if self.crops.ndim != 4 or self.crops.shape[1] != 3:
            raise ValueError(f"FaceCrops.crops must be [N,3,S,S], got {tuple(self.crops.shape)}")
        if self.crops.shape[0] != len(self.faces):
            raise ValueError(f"{self.crops.shape[0]} crops but {len(self.faces)} face records")

    def __len__(self) -> int:
        return len(self.faces)

    @property
    def is_empty(self) -> bool:
        return len(self.faces) == 0

    @staticmethod
    def empty(crop_size: int = 512) -> "FaceCrops":
        return FaceCrops(torch.zeros(0, 3, crop_size, crop_size), (), crop_size)

    @staticmethod
    def concat(parts: "list[FaceCrops]", crop_size: int = 512) -> "FaceCrops":
        """The faces of several FaceCrops, in order (parsing masks kept when every part has them)."""
        parts = [p for p in parts if not p.is_empty]
        if len(parts) <= 1:
            return parts[0] if parts else FaceCrops.empty(crop_size)
        masks = [p.parsing_masks for p in parts]
        return dataclasses.replace(parts[0], crops=torch.cat([p.crops for p in parts]),
                                   faces=tuple(f for p in parts for f in p.faces),
                                   parsing_masks=None if any(m is None for m in masks) else torch.cat(masks))

    def with_crops(self, crops: torch.Tensor, step: str) -> "FaceCrops":
        """New FaceCrops holding restored crops (same geometry)."""
        if crops.shape[0] != len(self.faces):
            raise ValueError(f"expected {len(self.faces)} crops, got {crops.shape[0]}")
        crops = crops.float()
        if crops.shape[-1] != self.crop_size or crops.shape[-2] != self.crop_size:
            crops = torch.nn.functional.interpolate(crops, size=(self.crop_size, self.crop_size),
                                                    mode="bicubic", align_corners=False, antialias=True)
        return dataclasses.replace(self, crops=crops.clamp(0, 1), history=self.history + (step,))

    def with_faces(self, faces: tuple[FaceInfo, ...]) -> "FaceCrops":
        return dataclasses.replace(self, faces=tuple(faces))

    def select(self, indices: list[int]) -> "FaceCrops":
        idx = torch.as_tensor(indices, dtype=torch.long)
        masks = None if self.parsing_masks is None else self.parsing_masks[idx]
        return dataclasses.replace(self, crops=self.crops[idx], faces=tuple(self.faces[i] for i in indices),
                                   parsing_masks=masks)

    def latest_quality(self, metric: Optional[str] = None) -> list[Optional[QualityScore]]:
        out = []
        for f in self.faces:
            qs = [q for q in f.quality if metric is None or q.metric == metric]
            out.append(qs[-1] if qs else None)
        return out


@dataclass(frozen=True)
class FaceLatent:
    """What the lookup step hands to the refine step (one entry per face, batched on dim 0)."""

    restorer: str                                   # registry name or file of the restorer
    architecture: str                               # e.g. "CodeFormer"
    lq_features: torch.Tensor                       # encoder output before quantisation [N,C,h,w]
    quantized: torch.Tensor                         # codebook features chosen by the lookup [N,C,h,w]
    indices: Optional[torch.Tensor] = None          # [N, h*w] code indices
    logits: Optional[torch.Tensor] = None           # [N, h*w, K] lookup logits
    skip_features: dict[str, torch.Tensor] = field(default_factory=dict)  # encoder skips for the fidelity path
    fidelity: float = 0.5
    lq_crops: Optional[torch.Tensor] = None         # the degraded crops the lookup started from [N,3,S,S]
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.quantized.shape[0])
