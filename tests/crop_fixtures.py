"""Synthetic faces with known geometry for the crop/paste tests (no weights needed)."""
import math

import numpy as np
import torch

from facerefine.core.crop.align import FFHQ_TEMPLATE_512

from facerefine.core.types import RawDetections


def texture(size=512, seed=0):
    """Smooth random RGB content [size,size,3] (a stand-in for a face crop)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, size // 16, size // 16, generator=g)
    img = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    return img.clamp(0, 1)[0].permute(1, 2, 0).numpy().astype(np.float32)


def similarity(scale, angle_deg, tx, ty):
    a = math.radians(angle_deg)
    c, s = scale * math.cos(a), scale * math.sin(a)
    return np.array([[c, -s, tx], [s, c, ty]], dtype=np.float64)


def place_faces(height, width, crop_to_image_maps, seed=0):
    """An image with a synthetic 512-crop warped in by each crop->image map (OpenCV, independent of
    our warp), the detections with the exactly known landmarks, and the face contents."""
    import cv2
    canvas = np.full((height, width, 3), 0.35, np.float32)
    boxes, marks, faces = [], [], []
    for k, m in enumerate(crop_to_image_maps):
        face = texture(512, seed + k)
        warped = cv2.warpAffine(face, m, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT,
                                borderValue=(-1, -1, -1))
        inside = warped[..., 0] >= 0
        canvas[inside] = warped[inside]
        pts = np.hstack([FFHQ_TEMPLATE_512, np.ones((5, 1))]) @ m.T
        marks.append(pts)
        x0, y0 = pts.min(0) - 40 * m[0, 0]
        x1, y1 = pts.max(0) + 40 * m[0, 0]
        boxes.append([x0, y0, x1, y1])
        faces.append(face)
    det = RawDetections(torch.tensor(boxes, dtype=torch.float32), torch.linspace(0.99, 0.95, len(boxes)),
                        torch.tensor(np.array(marks), dtype=torch.float32))
    return torch.from_numpy(np.clip(canvas, 0, 1))[None], det, faces


def psnr(a, b):
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)
