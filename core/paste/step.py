"""The paste step as the pipeline calls it: (restored) face crops back into their images through the inverse
affine.

``paste_back(images, face_crops, PasteOptions()) -> (images, masks)``. Pixels whose mask is 0 are returned
bit-identical; the target may be larger than the image that was cropped (e.g. upscaled afterwards): the inverse
affine is rescaled to the target's size.
"""
from __future__ import annotations

import time
import warnings
from typing import Optional

import numpy as np
import torch

from ..crop.warp import compose, invert_affine, mapped_box, scale_matrix, warp
from ..image_io import sanitize_images
from ..types import FaceCrops
from .color import color_correct
from .masks import box_masks, landmark_masks, load_parser, parse_labels, parsing_available, parsing_masks, soften
from .options import PasteOptions


def resolve_mask_kind(kind: str) -> str:
    if kind != "auto":
        return kind
    for parser in ("parsenet", "bisenet"):
        if parsing_available(parser):
            return parser
    return "landmarks"


def face_masks(face_crops: FaceCrops, options: PasteOptions = PasteOptions()) -> torch.Tensor:
    """Soft paste masks [N,S,S] in crop space (1 = use the crop)."""
    n, size = len(face_crops), face_crops.crop_size
    if n == 0:
        return torch.zeros(0, size, size)
    kind = resolve_mask_kind(options.mask)
    if face_crops.parsing_masks is not None:
        hard = face_crops.parsing_masks.float().cpu()
    elif kind == "landmarks":
        marks = [np.hstack([f.landmarks, np.ones((5, 1))]) @ np.asarray(f.affine).T for f in face_crops.faces]
        hard = landmark_masks(marks, size, options.protect_hair)
    elif kind == "box":
        hard = box_masks(n, size)
    else:
        labels = parse_labels(face_crops.crops, load_parser(kind, options.device), kind)
        hard = parsing_masks(labels, options.protect_hair)
    unit = size / 512.0
    return soften(hard, options.erode * unit, options.feather * unit)


def paste_back(images: torch.Tensor, face_crops: FaceCrops, options: PasteOptions = PasteOptions(),
               timings: Optional[dict] = None, in_place: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend every crop into its image. Returns (images [B,H,W,3], masks [B,H,W] of the blend weights).
    ``in_place``: blend into ``images`` itself (float32 [B,H,W,3]) instead of a copy."""
    images = sanitize_images(images) if not (isinstance(images, torch.Tensor) and images.ndim == 4
                                             and images.shape[-1] == 3 and images.dtype == torch.float32) else images
    start = time.perf_counter()
    batch, height, width = images.shape[:3]
    masks = torch.zeros(batch, height, width)
    if face_crops is None or face_crops.is_empty:
        return images, masks
    out = images if in_place else images.clone()
    crop_masks = face_masks(face_crops, options)
    device = torch.device(options.device)
    size = face_crops.crop_size
    for i, face in enumerate(face_crops.faces):
        b = face.image_index
        if b >= batch:
            warnings.warn(f"face {i} belongs to image {b}, but only {batch} image(s) were given; skipped",
                          RuntimeWarning)
            continue
        src_h, src_w = face.image_size
        crop_to_target = compose(scale_matrix(width / src_w, height / src_h), face.inverse_affine)
        x0, y0, x1, y1 = mapped_box(crop_to_target, size, size)
        xa, ya = max(0, int(np.floor(x0)) - 1), max(0, int(np.floor(y0)) - 1)
        xb, yb = min(width, int(np.ceil(x1)) + 2), min(height, int(np.ceil(y1)) + 2)
        if xb <= xa or yb <= ya:
            continue
        crop_to_roi = crop_to_target.copy()
        crop_to_roi[:, 2] -= (xa, ya)
        roi = out[b, ya:yb, xa:xb].to(device)
        roi_clean = torch.nan_to_num(roi, nan=0.0)
        crop = face_crops.crops[i:i + 1].to(device, torch.float32)
        mask = crop_masks[i:i + 1, None].to(device)
        if options.color_correction != "none":
            original = warp(roi_clean.permute(2, 0, 1)[None], invert_affine(crop_to_roi), size, size,
                            mode="bicubic", padding="border").clamp(0, 1)
            crop = color_correct(crop, original, mask, options.color_correction)
        h, w = yb - ya, xb - xa
        pasted = warp(crop, crop_to_roi, h, w, mode="bicubic", padding="border")[0].permute(1, 2, 0).clamp(0, 1)
        weight = warp(mask, crop_to_roi, h, w, mode="bilinear", padding="zeros")[0, 0].clamp(0, 1)
        weight = weight * float(options.visibility)
        blend = roi_clean + weight[..., None] * (pasted - roi_clean)
        out[b, ya:yb, xa:xb] = torch.where(weight[..., None] > 0, blend, roi).cpu()
        masks[b, ya:yb, xa:xb] = torch.maximum(masks[b, ya:yb, xa:xb], weight.cpu())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if timings is not None:
        timings["paste"] = timings.get("paste", 0.0) + time.perf_counter() - start
    return out, masks
