"""User options of the paste step."""
from __future__ import annotations

from dataclasses import dataclass

from ...errors import FaceRefineError

MASK_KINDS = ("auto", "landmarks", "parsenet", "bisenet", "box")
COLOR_MODES = ("none", "lab", "lowfreq")


@dataclass(frozen=True)
class PasteOptions:
    mask: str = "auto"              # auto (parsing if its weights exist, else landmarks) | landmarks | parsenet | bisenet | box
    erode: float = 8.0              # shrink the mask by this many pixels (at 512 crop scale)
    feather: float = 16.0           # soft edge width in pixels (at 512 crop scale)
    protect_hair: bool = False      # keep the original hairline / hair
    visibility: float = 1.0         # 0 = original, 1 = fully restored face
    color_correction: str = "lab"   # none | lab (mean/std in LAB) | lowfreq (low frequencies of the original)
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.mask not in MASK_KINDS:
            raise FaceRefineError(f"mask must be one of {MASK_KINDS}, got '{self.mask}'")
        if self.color_correction not in COLOR_MODES:
            raise FaceRefineError(f"colour correction must be one of {COLOR_MODES}, got '{self.color_correction}'")
        if not 0.0 <= self.visibility <= 1.0:
            raise FaceRefineError(f"visibility must be within 0..1, got {self.visibility}")
        if self.erode < 0 or self.feather < 0:
            raise FaceRefineError("erode and feather must be >= 0")
