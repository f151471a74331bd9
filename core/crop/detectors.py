"""Face detectors with 5 landmarks: embedded MTCNN (always available) and facexlib RetinaFace.

Every backend takes [B,3,H,W] RGB 0..255 on its device and returns one RawDetections per
image in that image's pixels. Loaded detectors are cached per (name, device) in models/cache.py.
"""
from __future__ import annotations

import logging
import warnings
from typing import Callable

import numpy as np
import torch

from ...errors import FaceRefineError, WeightsNotFoundError
from ...models.loading import load_into, load_state_dict
from ...models.locate import resolve
from ...models.cache import cached
from ..types import RawDetections
from .mtcnn import MTCNN

log = logging.getLogger("facerefine")

EMBEDDED = "mtcnn"
RETINAFACE = {"retinaface": ("retinaface-resnet50", "resnet50"),
              "retinaface-resnet50": ("retinaface-resnet50", "resnet50"),
              "retinaface-mobilenet": ("retinaface-mobilenet", "mobile0.25")}
DETECTORS = ("auto", EMBEDDED, *RETINAFACE)
DEFAULT_THRESHOLD = {EMBEDDED: 0.9, "retinaface": 0.8}

class Detector:
    """A loaded backend: ``detect(images_0_255 [B,3,H,W], min_face) -> list[RawDetections]``."""

    def __init__(self, name: str, fn: Callable, device: torch.device, default_threshold: float) -> None:
        self.name, self.fn, self.device, self.default_threshold = name, fn, device, default_threshold

    def detect(self, images: torch.Tensor, min_face: float = 20.0) -> list[RawDetections]:
        return self.fn(images.to(self.device), min_face)


def retinaface_available(name: str = "retinaface") -> bool:
    try:
        resolve(RETINAFACE[name][0], "facedetection", download=False)
        return True
    except WeightsNotFoundError:
        return False


def resolve_name(name: str) -> str:
    name = (name or "auto").lower()
    if name in ("embedded", "default"):
        return EMBEDDED
    if name == "auto":
        return "retinaface" if retinaface_available() else EMBEDDED
    if name not in DETECTORS:
        raise FaceRefineError(f"unknown detector '{name}'; choose one of {', '.join(DETECTORS)}")
    return name


def load_detector(name: str = "auto", device: str | torch.device = "cpu") -> Detector:
    """Load (once per device, models/cache.py) and return a detector. 'auto' = RetinaFace if its weights are
    present, else MTCNN; with 'auto', a RetinaFace file that cannot be loaded is skipped with a warning naming it."""
    auto = (name or "auto").lower() == "auto"
    name = resolve_name(name)
    device = torch.device(device)
    load = (lambda: _load_mtcnn(device)) if name == EMBEDDED else (lambda: _load_retinaface(name, device))
    try:
        return cached("detector", (name, str(device)), load)
    except FaceRefineError as err:
        if not auto or name == EMBEDDED:
            raise
        msg = f"detector 'auto': skipped {name} ({str(err).splitlines()[0]}); using the embedded {EMBEDDED}"
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        log.warning("FaceRefine: %s", msg)
        return cached("detector", (EMBEDDED, str(device)), lambda: _load_mtcnn(device))


def _load_mtcnn(device: torch.device) -> Detector:
    from ...models.arch.mtcnn import MTCNNNets
    path = resolve("mtcnn", "facedetection")
    nets = MTCNNNets()
    load_into(nets, load_state_dict(path), "MTCNN", path.name)
    cascade = MTCNN(nets.to(device))
    return Detector(EMBEDDED, lambda images, min_face: cascade(images, min_face), device,
                    DEFAULT_THRESHOLD[EMBEDDED])


def build_retinaface(network: str, device: torch.device) -> torch.nn.Module:
    """facexlib's RetinaFace module, not yet loaded (no download happens here)."""
    from facexlib.detection.retinaface import RetinaFace
    return RetinaFace(network_name=network, half=False, device=device)


def _load_retinaface(name: str, device: torch.device) -> Detector:
    registry_name, network = RETINAFACE[name]
    path = resolve(registry_name, "facedetection")  # respects FACEREFINE_OFFLINE, names file/folders/URL
    model = build_retinaface(network, device)
    load_into(model, load_state_dict(path), f"RetinaFace ({network})", path.name)
    model = model.to(device).eval()
    return Detector(name, lambda images, min_face: _run_retinaface(model, images), device,
                    DEFAULT_THRESHOLD["retinaface"])


@torch.inference_mode()
def _run_retinaface(model, images: torch.Tensor) -> list[RawDetections]:
    bgr = images.flip(1).permute(0, 2, 3, 1).float()  # facexlib wants [n,h,w,c] BGR 0..255
    boxes, marks = model.batched_detect_faces(bgr, conf_threshold=0.5, nms_threshold=0.4, use_origin_size=True)
    out = []
    for b, m in zip(boxes, marks):
        b, m = np.asarray(b, dtype=np.float32), np.asarray(m, dtype=np.float32)
        if b.size == 0:
            out.append(RawDetections.empty())
            continue
        out.append(RawDetections(torch.from_numpy(b[:, :4].copy()), torch.from_numpy(b[:, 4].copy()),
                                 torch.from_numpy(m.reshape(-1, 5, 2).copy())))
    return out
