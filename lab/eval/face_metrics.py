"""Full-reference face metrics of the benchmark: identity distance (dlib, and the FaceNet judge), face-region
colour error (CIELAB) and fine-detail energy (``detail_ratio``: the one definition both ``eval london-heldout``
and the generalisation test use).

Identity uses dlib's 128-d face-recognition ResNet (CC0 weights from ``face-recognition-models``, run by
``dlib-bin``): an eval-only extra, never a runtime dependency (``pip install dlib-bin face-recognition-models``).
The face's dlib landmarks are found once on the HQ crop and reused for every variant of that face, so the
distance measures what the restorer changed, not landmark jitter. Distance is Euclidean; dlib's
same-person threshold is 0.6 (lower = closer to the HQ identity).
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

INSTALL_HINT = "pip install dlib-bin face-recognition-models"


def to_u8(x: torch.Tensor) -> np.ndarray:
    """[3,H,W] or [N,3,H,W] 0..1 -> uint8 HWC (or NHWC) RGB."""
    arr = (x.detach().float().clamp(0, 1) * 255).round().byte()
    return np.ascontiguousarray(arr.movedim(-3, -1).cpu().numpy())


def crop_landmarks(face) -> np.ndarray:
    """The 5 landmarks of a FaceInfo in its crop's pixels."""
    lm = np.asarray(face.landmarks, dtype=np.float64).reshape(5, 2)
    a = np.asarray(face.affine, dtype=np.float64)
    return lm @ a[:, :2].T + a[:, 2]


def face_region_masks(landmarks_crop: list[np.ndarray], size: int) -> torch.Tensor:
    """Hard face-oval masks [N,S,S] (brows to chin, cheek to cheek) from crop landmarks (paste step's outline)."""
    from ...core.paste.masks import landmark_masks
    return (landmark_masks(list(landmarks_crop), size, protect_hair=True) > 0.5).float()


# ------------------------------------------------------------------------------------------- colour

def delta_e_face(x: torch.Tensor, hq: torch.Tensor, masks: torch.Tensor, blur_sigma: float = 2.0) -> torch.Tensor:
    """Mean CIEDE2000 colour difference to the HQ face inside the face mask, one value per face [N].

    Both images are low-passed first (Gaussian ``blur_sigma`` px at 512, scaled with the size) so the value
    reflects colour and tone (tint, pallor, orange lips), not pixel-level texture or noise.
    """
    import cv2
    from skimage.color import deltaE_ciede2000, rgb2lab
    sigma = blur_sigma * x.shape[-1] / 512
    out = []
    for a, b, m in zip(x, hq, masks):
        pa, pb = (cv2.GaussianBlur(np.ascontiguousarray(t.permute(1, 2, 0).float().clamp(0, 1).cpu().numpy()),
                                   (0, 0), sigma) for t in (a, b))
        de = deltaE_ciede2000(rgb2lab(pb), rgb2lab(pa))
        w = m.cpu().numpy() > 0.5
        out.append(float(de[w].mean()) if w.any() else float("nan"))
    return torch.tensor(out)


def face_mad(a: torch.Tensor, b: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference in 8-bit grey levels over the face mask, per face [N]."""
    d = (a.float() - b.float()).abs().mean(1) * 255
    m = masks.to(d.device)
    return (d * m).sum((1, 2)) / m.sum((1, 2)).clamp_min(1)


# ------------------------------------------------------------------------------------------- detail

DETAIL_SIGMA = 1.5  # px at 512² (scaled with the crop size)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [N,1,H,W], radius ceil(4 sigma), reflected borders."""
    import torch.nn.functional as F
    r = max(1, math.ceil(4 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))


def detail_energy(x: torch.Tensor, masks: torch.Tensor, sigma: float = DETAIL_SIGMA) -> torch.Tensor:
    """Fine-detail energy inside the face mask, per face [N], in grey levels².

    The grey image (mean of R, G, B, 0..255) minus its Gaussian blur (``sigma`` px at 512², scaled with the
    size); the energy is the mean of the squared residual over the face mask.
    """
    grey = x.detach().float().clamp(0, 1).mean(1, keepdim=True).cpu() * 255
    residual = (grey - _gaussian_blur(grey, sigma * x.shape[-1] / 512))[:, 0]
    m = masks.float().cpu()
    return (residual ** 2 * m).sum((1, 2)) / m.sum((1, 2)).clamp_min(1)


def detail_ratio(x: torch.Tensor, hq: torch.Tensor, masks: torch.Tensor,
                 hq_energy: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fine-detail energy of ``x`` over the HQ face's, per face [N] (HQ = 1; blur < 1; noise, blocks or GAN
    texture can exceed 1). ``hq_energy``: the HQ faces' ``detail_energy``, when already computed."""
    ref = detail_energy(hq, masks) if hq_energy is None else hq_energy
    return detail_energy(x, masks) / ref.clamp_min(1e-6)


# ------------------------------------------------------------------------------------------- identity

def dlib_model_files() -> Optional[dict]:
    """Paths of the dlib model files shipped by ``face-recognition-models`` (None when not installed).

    The package's own __init__ needs pkg_resources (gone from recent setuptools), so it is located, not imported.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]) / "models"
    files = {"shape5": root / "shape_predictor_5_face_landmarks.dat",
             "recognition": root / "dlib_face_recognition_resnet_model_v1.dat"}
    return files if all(p.is_file() for p in files.values()) else None


class DlibIdentity:
    """128-d dlib face descriptors; ``distance(x, hq_shape)`` per face. Raises ImportError when unavailable."""

    def __init__(self) -> None:
        try:
            import dlib
        except ImportError as err:
            raise ImportError(f"dlib is not installed ({INSTALL_HINT})") from err
        files = dlib_model_files()
        if files is None:
            raise ImportError(f"face-recognition-models is not installed ({INSTALL_HINT})")
        self.dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.shape5 = dlib.shape_predictor(str(files["shape5"]))
        self.net = dlib.face_recognition_model_v1(str(files["recognition"]))

    def shape(self, hq_u8: np.ndarray, landmarks_crop: np.ndarray):
        """dlib landmarks of the face on its HQ crop: the HOG detection nearest the crop landmarks, else a box
        around the landmark face outline."""
        dlib = self.dlib
        centre = np.asarray(landmarks_crop).mean(0)
        dets = list(self.detector(hq_u8, 0))
        if dets:
            rect = min(dets, key=lambda r: np.hypot((r.left() + r.right()) / 2 - centre[0],
                                                    (r.top() + r.bottom()) / 2 - centre[1]))
        else:
            from ...core.paste.masks import face_outline
            poly = face_outline(landmarks_crop, protect_hair=True)
            x0, y0 = poly.min(0)
            x1, y1 = poly.max(0)
            rect = dlib.rectangle(int(x0), int(y0), int(x1), int(y1))
        return self.shape5(hq_u8, rect)

    def descriptor(self, img_u8: np.ndarray, shape) -> np.ndarray:
        return np.asarray(self.net.compute_face_descriptor(img_u8, shape, 0), dtype=np.float64)


class IdentityJudges:
    """The identity columns of both benchmarks, each a distance to the HQ face (lower = closer):
    ``identity`` by dlib's descriptor (landmarks found once on the HQ crop) and ``id_facenet`` by the FaceNet
    judge (``facenet_judge``, a network no guide or loss of this project sees). A judge that cannot run here is
    left out with a note in ``notes``."""

    def __init__(self, hq: torch.Tensor, faces: list, notes: list, dlib: bool = True, facenet: bool = True):
        self.dlib = self.facenet = None
        if dlib:
            try:
                self.dlib = DlibIdentity()
                hq_u8 = to_u8(hq)
                self.shapes = [self.dlib.shape(hq_u8[i], crop_landmarks(f)) for i, f in enumerate(faces)]
                self.hq_desc = [self.dlib.descriptor(hq_u8[i], s) for i, s in enumerate(self.shapes)]
            except ImportError as err:
                self.dlib = None
                notes.append(f"dlib identity distance skipped, its column is left out: {err}")
        if facenet:
            from .facenet_judge import FaceNetJudge, crop_boxes
            try:
                self.facenet = FaceNetJudge()
            except ImportError as err:
                notes.append(f"FaceNet identity judge skipped, its column is left out: {err}")
            else:
                self.boxes = crop_boxes(faces, hq.shape[-1])
                self.hq_emb = self.facenet.embed(hq, self.boxes)

    @property
    def columns(self) -> list[str]:
        return (["identity"] if self.dlib else []) + (["id_facenet"] if self.facenet else [])

    def distances(self, x: torch.Tensor) -> dict[str, list[float]]:
        out = {}
        if self.dlib is not None:
            u8 = to_u8(x)
            out["identity"] = [float(np.linalg.norm(self.dlib.descriptor(u8[i], s) - self.hq_desc[i]))
                               for i, s in enumerate(self.shapes)]
        if self.facenet is not None:
            emb = self.facenet.embed(x, self.boxes)
            out["id_facenet"] = [float(v) for v in self.facenet.distance(emb, self.hq_emb)]
        return out
