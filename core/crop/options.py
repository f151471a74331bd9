"""User options of the crop step."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from ...errors import FaceRefineError

CROP_SIZES = (256, 512, 1024)
SORT_ORDERS = ("largest", "left_to_right", "confidence")


@dataclass(frozen=True)
class CropOptions:
    detector: str = "auto"              # auto | mtcnn | retinaface | retinaface-mobilenet
    crop_size: int = 512                # 256, 512 or 1024
    det_threshold: Optional[float] = None  # None = the detector's default (MTCNN 0.9, RetinaFace 0.8)
    min_face_size: float = 0.0          # shorter bbox side in source pixels; smaller faces are dropped
    max_faces: int = 0                  # per image, after sorting; 0 = all
    sort: str = "largest"               # largest | left_to_right | confidence
    face_index: Union[None, int, tuple[int, ...]] = None  # pick faces (after sorting) by index
    only_center_face: bool = False      # keep only the face nearest the image centre
    device: str = "cpu"
    detect_max_side: int = 1280         # detect on a copy no larger than this; crop from full size
    batch_size: int = 8                 # images per detector call
    padding: str = "reflection"         # how crops are filled beyond the image edge: reflection | zeros | border

    def __post_init__(self) -> None:
        if self.crop_size not in CROP_SIZES:
            raise FaceRefineError(f"crop size must be one of {CROP_SIZES}, got {self.crop_size}")
        if self.sort not in SORT_ORDERS:
            raise FaceRefineError(f"sort must be one of {SORT_ORDERS}, got '{self.sort}'")
        if self.padding not in ("reflection", "zeros", "border"):
            raise FaceRefineError(f"padding must be reflection, zeros or border, got '{self.padding}'")
        if self.max_faces < 0 or self.min_face_size < 0 or self.detect_max_side < 64:
            raise FaceRefineError("max_faces and min_face_size must be >= 0, detect_max_side >= 64")

    @property
    def indices(self) -> Optional[tuple[int, ...]]:
        return parse_face_index(self.face_index)


def parse_face_index(value) -> Optional[tuple[int, ...]]:
    """None/''/'all'/-1 -> None; 2 -> (2,); '0,2' -> (0, 2)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip().lower()
        if value in ("", "all", "-1"):
            return None
        try:
            return tuple(int(v) for v in value.replace(" ", "").split(",") if v)
        except ValueError as err:
            raise FaceRefineError(f"face index must be a number or a list like 0,2 - got '{value}'") from err
    if isinstance(value, int):
        return None if value < 0 else (value,)
    return tuple(int(v) for v in value)
