"""Soft face masks in crop space: from landmarks (offline) or facexlib face parsing."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import FaceRefineError, WeightsNotFoundError
from ...models.loading import load_into, load_state_dict
from ...models.cache import cached
from ...models.locate import resolve

# CelebAMask-HQ labels used by facexlib's ParseNet and BiSeNet
BACKGROUND, NECK, NECKLACE, CLOTH, HAIR, HAT = 0, 14, 15, 16, 17, 18
NOT_FACE = (BACKGROUND, NECK, NECKLACE, CLOTH, HAIR, HAT)

def face_outline(landmarks_crop: np.ndarray, protect_hair: bool = False, points: int = 72) -> np.ndarray:
    """Polygon [P,2] of the face oval (brow/forehead to chin, cheek to cheek) from 5 crop landmarks.

    Proportions are those of the FFHQ-aligned face: eye-mouth distance sets the height,
    eye distance the width. protect_hair lowers and narrows the top so the hairline is kept.
    """
    lm = np.asarray(landmarks_crop, dtype=np.float64)
    eye_l, eye_r, mouth = lm[0], lm[1], (lm[3] + lm[4]) / 2
    eyes = (eye_l + eye_r) / 2
    across = eye_r - eye_l
    eye_dist = max(np.linalg.norm(across), 1e-3)
    right = across / eye_dist
    down = np.array([-right[1], right[0]])
    em = max(float(np.dot(mouth - eyes, down)), 0.5 * eye_dist)
    centre = eyes + down * 0.42 * em
    top = (0.97 if protect_hair else 1.26) * em      # centre -> hairline (protect: mid forehead)
    bottom = 1.4 * em                                 # centre -> chin
    half_w_top = (1.0 if protect_hair else 1.1) * eye_dist
    half_w_bottom = 1.02 * eye_dist
    t = np.linspace(0, 2 * np.pi, points, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    half_w = np.where(s < 0, half_w_top, half_w_bottom)
    reach = np.where(s < 0, top, bottom)
    # a slightly squarer than elliptic shape (exponent < 2 would pinch; 2.4 widens cheeks/jaw)
    ex = np.sign(c) * np.abs(c) ** (2 / 2.4)
    ey = np.sign(s) * np.abs(s) ** (2 / 2.4)
    return centre + np.outer(ex * half_w, right) + np.outer(ey * reach, down)


def landmark_masks(landmarks_crop: list[np.ndarray], size: int, protect_hair: bool = False) -> torch.Tensor:
    """Hard face masks [N,S,S] (1 inside the face outline)."""
    import cv2
    out = np.zeros((len(landmarks_crop), size, size), np.float32)
    for i, lm in enumerate(landmarks_crop):
        poly = np.round(face_outline(lm, protect_hair) * 16).astype(np.int32)  # 4 fractional bits
        cv2.fillPoly(out[i], [poly], 1.0, lineType=cv2.LINE_AA, shift=4)
    return torch.from_numpy(out)


def box_masks(n: int, size: int) -> torch.Tensor:
    """The whole crop (classic facexlib behaviour, rectangular seam unless feathered)."""
    return torch.ones(n, size, size)


def parsing_available(kind: str) -> bool:
    try:
        resolve(kind, "facedetection", download=False)
        return True
    except WeightsNotFoundError:
        return False


def build_parser(kind: str) -> torch.nn.Module:
    if kind == "parsenet":
        from facexlib.parsing.parsenet import ParseNet
        return ParseNet(in_size=512, out_size=512, parsing_ch=19)
    if kind == "bisenet":
        from facexlib.parsing.bisenet import BiSeNet
        return BiSeNet(num_class=19)
    raise FaceRefineError(f"unknown face parser '{kind}'")


def load_parser(kind: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """facexlib's ParseNet or BiSeNet with its weights, once per device (models/cache.py)."""
    def load():
        path = resolve(kind, "facedetection")  # offline-safe; error names file, folders, URL
        model = build_parser(kind)
        load_into(model, load_state_dict(path), kind, path.name)
        return model.to(device).eval()
    return cached("parser", (kind, str(device)), load)


@torch.inference_mode()
def parse_labels(crops: torch.Tensor, parser: torch.nn.Module, kind: str) -> torch.Tensor:
    """Per-pixel CelebAMask-HQ labels [N,S,S] of crops [N,3,S,S] in 0..1."""
    device = next(parser.parameters()).device
    size = crops.shape[-1]
    labels = []
    for i in range(crops.shape[0]):
        x = F.interpolate(crops[i:i + 1].to(device).float(), size=(512, 512), mode="bilinear",
                          align_corners=False, antialias=True)
        if kind == "parsenet":
            x = (x - 0.5) / 0.5
        else:
            mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
            std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
            x = (x - mean) / std
        logits = parser(x)[0]
        logits = F.interpolate(logits.float(), size=(size, size), mode="bilinear", align_corners=False)
        labels.append(logits.argmax(dim=1).cpu())
    return torch.cat(labels)


def parsing_masks(labels: torch.Tensor, protect_hair: bool = False) -> torch.Tensor:
    """Face-region masks [N,S,S] from parsing labels; protect_hair also keeps a margin around hair."""
    face = torch.ones_like(labels, dtype=torch.float32)
    for k in NOT_FACE:
        face[labels == k] = 0.0
    if protect_hair:
        hair = ((labels == HAIR) | (labels == HAT)).float()[:, None]
        grow = max(3, labels.shape[-1] // 64) * 2 + 1
        hair = F.max_pool2d(hair, grow, stride=1, padding=grow // 2)[:, 0]
        face = face * (1 - hair)
    return face


def soften(masks: torch.Tensor, erode: float, feather: float) -> torch.Tensor:
    """Erode by ``erode`` px, then blur with sigma ``feather`` px; values outside stay exactly 0."""
    import cv2
    out = []
    for m in masks.float().cpu().numpy():
        if erode > 0:
            k = int(round(erode)) * 2 + 1
            m = cv2.erode(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        if feather > 0:
            # blur inside a shrunk mask so the soft edge ends at the original outline
            inner = cv2.erode(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (int(feather) * 2 + 1,) * 2))
            k = int(feather * 2) * 2 + 1
            m = np.minimum(cv2.GaussianBlur(inner, (k, k), feather / 2), m)
            m = np.where(m > 1 - 1e-4, 1.0, m).astype(np.float32)  # blur round-off inside the face
        out.append(m)
    return torch.from_numpy(np.stack(out)).clamp(0, 1)
