"""The reference photo's face: found and aligned once per run, whatever form the user gave the photo in."""
from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import FaceRefineError, NoFaceError
from ..crop.options import CropOptions
from ..types import FaceCrops
from ..crop.landmarks import crop_landmarks

DETECT_SIZES = (256, 512, 1024)  # crop sizes the crop step aligns at; other sizes are resized from 512


@dataclass(frozen=True)
class ReferenceFace:
    """One face aligned to the FFHQ template like the face crops: ``crop`` [1,3,S,S] 0..1 and its 5 landmarks
    in crop fractions [1,5,2]."""
    crop: torch.Tensor
    landmarks: torch.Tensor

    @property
    def crop_size(self) -> int:
        return int(self.crop.shape[-1])

    @classmethod
    def from_photo(cls, photo: Any, crop_size: int, crop: Optional[CropOptions] = None) -> "ReferenceFace":
        """The photo's most confident face through the crop step, at ``crop_size``. ``photo``: a file path, an
        array [H,W(,C)] (uint8 or 0..1), an IMAGE tensor [B,H,W,C] 0..1 or an already aligned FaceCrops.
        ``crop``: the run's crop options (its detector and device find the face; default: auto on the CPU)."""
        if isinstance(photo, FaceCrops):
            return cls.from_crops(photo, crop_size)
        from ..crop.step import crop_faces
        run = crop or CropOptions()
        size = crop_size if crop_size in DETECT_SIZES else 512
        found = crop_faces(photo_image(photo), CropOptions(crop_size=size, detector=run.detector, device=run.device))
        return cls.from_crops(found, crop_size)

    @classmethod
    def from_crops(cls, crops: FaceCrops, crop_size: int) -> "ReferenceFace":
        """The most confident of already aligned faces, resized to ``crop_size``."""
        if crops.is_empty:
            raise NoFaceError("no face found in the reference photo; use a clear, front-facing photo of the same "
                              "person (or leave the reference empty to use the face's own identity)")
        best = max(range(len(crops)), key=lambda i: crops.faces[i].score)
        one = crops if len(crops) == 1 else crops.select([best])
        crop = one.crops
        if crop.shape[-1] != crop_size:
            crop = F.interpolate(crop, size=(crop_size, crop_size), mode="bicubic", antialias=True).clamp(0, 1)
        return cls(crop, torch.from_numpy(crop_landmarks(one)).float())


def photo_image(photo: Any) -> torch.Tensor:
    """A reference photo as the crop step's IMAGE [B,H,W,3] float 0..1."""
    if isinstance(photo, (str, PathLike)):
        from ..image_io import load_image
        photo = load_image(photo).image
    elif isinstance(photo, np.ndarray):
        arr = photo[:, :, None] if photo.ndim == 2 else photo
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        tensor = torch.from_numpy(np.ascontiguousarray(arr))
        photo = tensor.float().div_(255.0) if arr.dtype == np.uint8 else tensor.float()
    image = torch.as_tensor(photo)
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4 or image.shape[-1] not in (3, 4):
        raise FaceRefineError(f"reference must be an image [B,H,W,3], got shape {tuple(image.shape)}")
    return image[..., :3].float()


__all__ = ["ReferenceFace", "photo_image"]
