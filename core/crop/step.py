"""The crop step as the pipeline calls it: detect faces (5 landmarks), then align them to the FFHQ template.

``crop_faces(images, CropOptions()) -> FaceCrops``; the two halves are separate so they can be timed and
chunked: ``detect_faces`` then ``align_faces``.
"""
from __future__ import annotations

import logging
import time
import warnings
from typing import Optional

import torch
import torch.nn.functional as F

from ..image_io import sanitize_images
from ..types import FaceCrops, FaceInfo, RawDetections
from .align import crop_one, estimate_affine
from .detectors import load_detector
from .options import CropOptions
from .warp import invert_affine

log = logging.getLogger("facerefine")
MIN_DETECT_SIDE = 16


def _add_time(timings: Optional[dict], key: str, start: float) -> None:
    if timings is not None:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def detect_faces(images: torch.Tensor, options: CropOptions = CropOptions(),
                 timings: Optional[dict] = None) -> list[RawDetections]:
    """Faces of each image (after filtering, sorting and picking), in source pixels."""
    images = sanitize_images(images)
    start = time.perf_counter()
    batch, height, width = images.shape[:3]
    if min(height, width) < MIN_DETECT_SIDE:
        warnings.warn(f"image {width}x{height} is too small to contain a detectable face", RuntimeWarning)
        return [RawDetections.empty() for _ in range(batch)]
    detector = load_detector(options.detector, options.device)
    threshold = options.det_threshold if options.det_threshold is not None else detector.default_threshold
    scale = min(1.0, options.detect_max_side / max(height, width))
    det_h, det_w = max(1, round(height * scale)), max(1, round(width * scale))
    found: list[RawDetections] = []
    for b0 in range(0, batch, max(1, options.batch_size)):
        chunk = images[b0:b0 + options.batch_size].to(detector.device).permute(0, 3, 1, 2)  # channels-last view
        if scale < 1.0:
            chunk = F.interpolate(chunk, size=(det_h, det_w), mode="area")
        min_face = max(20.0, options.min_face_size * scale * 0.8)
        for det in detector.detect(chunk.float() * 255.0, min_face=min_face):
            found.append(_to_source(det, det_w / width, det_h / height))
    _sync(detector.device)
    picked = [_select(det, threshold, options, height, width) for det in found]
    _add_time(timings, "detect", start)
    return picked


def _to_source(det: RawDetections, sx: float, sy: float) -> RawDetections:
    """Detection-copy pixel-edge coordinates -> source pixel-centre coordinates."""
    if det.boxes.shape[0] == 0:
        return det
    s = torch.tensor([sx, sy])
    boxes = (det.boxes.view(-1, 2, 2) / s).view(-1, 4)
    marks = det.landmarks / s - 0.5
    return RawDetections(boxes, det.scores, marks)


def _select(det: RawDetections, threshold: float, o: CropOptions, height: int, width: int) -> RawDetections:
    if det.boxes.shape[0] == 0:
        return det
    size = torch.minimum(det.boxes[:, 2] - det.boxes[:, 0], det.boxes[:, 3] - det.boxes[:, 1])
    keep = (det.scores >= threshold) & (size >= o.min_face_size)
    boxes, scores, marks, size = det.boxes[keep], det.scores[keep], det.landmarks[keep], size[keep]
    if boxes.shape[0] == 0:
        return RawDetections.empty()
    if o.sort == "largest":
        order = torch.argsort(size, descending=True, stable=True)
    elif o.sort == "confidence":
        order = torch.argsort(scores, descending=True, stable=True)
    else:
        order = torch.argsort((boxes[:, 0] + boxes[:, 2]) / 2, stable=True)
    order = order.tolist()
    if o.only_center_face:
        centre = torch.tensor([width / 2, height / 2])
        dist = (((boxes[:, :2] + boxes[:, 2:]) / 2 - centre) ** 2).sum(1)
        order = [int(dist.argmin())]
    idx = o.indices
    if idx is not None:
        bad = [i for i in idx if not -len(order) <= i < len(order)]
        if bad:
            warnings.warn(f"face index {bad} out of range: {len(order)} face(s) found", RuntimeWarning)
        order = [order[i] for i in idx if -len(order) <= i < len(order)]
    if o.max_faces:
        order = order[:o.max_faces]
    sel = torch.as_tensor(order, dtype=torch.long)
    return RawDetections(boxes[sel], scores[sel], marks[sel])


def align_faces(images: torch.Tensor, detections: list[RawDetections], options: CropOptions = CropOptions(),
                timings: Optional[dict] = None) -> FaceCrops:
    """Aligned crops of the detected faces (read from the full-resolution images)."""
    images = sanitize_images(images)
    start = time.perf_counter()
    height, width = images.shape[1:3]
    size = options.crop_size
    crops, faces = [], []
    for image_index, det in enumerate(detections):
        for k in range(det.boxes.shape[0]):
            marks = det.landmarks[k].double().numpy()
            affine = estimate_affine(marks, size)
            crops.append(crop_one(images[image_index], affine, size, options.device, options.padding))
            x0, y0, x1, y1 = (float(v) for v in det.boxes[k])
            faces.append(FaceInfo(affine=affine, inverse_affine=invert_affine(affine), landmarks=marks,
                                  bbox=(x0, y0, x1, y1), score=float(det.scores[k]), image_index=image_index,
                                  image_size=(int(height), int(width))))
    _add_time(timings, "align", start)
    if not faces:
        return FaceCrops.empty(size)
    return FaceCrops(torch.stack(crops), tuple(faces), size, history=("crop",))


def crop_faces(images: torch.Tensor, options: CropOptions = CropOptions(),
               timings: Optional[dict] = None) -> FaceCrops:
    """Detect and align every face of a batch [B,H,W,C]. No face: empty FaceCrops and a warning."""
    images = sanitize_images(images)
    detections = detect_faces(images, options, timings)
    crops = align_faces(images, detections, options, timings)
    if crops.is_empty:
        warnings.warn("no face found; the image is left unchanged", RuntimeWarning)
        log.warning("FaceRefine: no face found")
    return crops
