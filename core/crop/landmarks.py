"""The 5 landmarks of aligned face crops in crop fractions (eye L, eye R, nose, mouth L, mouth R)."""
from __future__ import annotations

import numpy as np

from ..types import FaceCrops

# FFHQ 512 template (facexlib): eye L, eye R, nose, mouth L, mouth R, as fractions of the crop side.
FFHQ_TEMPLATE = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                          [201.26117, 371.41043], [313.08905, 371.15118]], dtype=np.float64) / 512.0


def crop_landmarks(face_crops: FaceCrops) -> np.ndarray:
    """5 landmarks per face in crop fractions [N,5,2] (the FFHQ template where geometry is missing)."""
    out = []
    for face in face_crops.faces:
        lm, aff = np.asarray(face.landmarks, np.float64), np.asarray(face.affine, np.float64)
        if lm.shape == (5, 2) and aff.shape == (2, 3) and np.isfinite(lm).all():
            out.append((lm @ aff[:, :2].T + aff[:, 2]) / face_crops.crop_size)
        else:
            out.append(FFHQ_TEMPLATE)
    return np.stack(out) if out else np.zeros((0, 5, 2))


__all__ = ["FFHQ_TEMPLATE", "crop_landmarks"]
