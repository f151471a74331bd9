"""Classical (non-learned) face restoration baseline for the benchmark: denoise + unsharp mask (OpenCV).

    out = classical_restore(lq [N,3,S,S] 0..1, ClassicalParams("nlmeans", 6, 1.5, 0.8))

The parameters for each benchmark severity are tuned once on TRAINING London identities by
``python -m facerefine.lab.eval.tune_classical`` (a small grid search on PSNR) and recorded in
``classical_params.json`` next to this file; the benchmark reads them from there.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

PARAMS_FILE = Path(__file__).resolve().parent / "classical_params.json"
DENOISERS = ("none", "nlmeans", "bilateral")


@dataclass(frozen=True)
class ClassicalParams:
    denoise: str = "nlmeans"      # none | nlmeans (cv2.fastNlMeansDenoisingColored) | bilateral (cv2.bilateralFilter)
    strength: float = 6.0         # NL-means h (= hColor) or bilateral sigmaColor, in 8-bit grey levels
    sharpen_sigma: float = 1.5    # unsharp-mask Gaussian sigma in px at 512 (scaled with the face size)
    sharpen_amount: float = 0.0   # out = x + amount * (x - blur(x)); 0 = no sharpening

    def __post_init__(self) -> None:
        if self.denoise not in DENOISERS:
            raise ValueError(f"denoise must be one of {DENOISERS}, got {self.denoise!r}")

    def describe(self) -> str:
        den = {"none": "no denoise", "nlmeans": f"NL-means h={self.strength:g}",
               "bilateral": f"bilateral sigmaColor={self.strength:g}"}[self.denoise]
        sharp = (f"unsharp sigma={self.sharpen_sigma:g} amount={self.sharpen_amount:g}" if self.sharpen_amount > 0
                 else "no sharpening")
        return f"{den} + {sharp}"

    def to_dict(self) -> dict:
        return asdict(self)


def denoise_u8(img_rgb: np.ndarray, p: ClassicalParams, size_scale: float = 1.0) -> np.ndarray:
    """One uint8 RGB image [H,W,3] through the denoiser of ``p``."""
    import cv2
    if p.denoise == "nlmeans" and p.strength > 0:
        return cv2.fastNlMeansDenoisingColored(np.ascontiguousarray(img_rgb), None, float(p.strength),
                                               float(p.strength), 7, 21)
    if p.denoise == "bilateral" and p.strength > 0:
        d = max(3, int(round(9 * size_scale)) | 1)
        return cv2.bilateralFilter(np.ascontiguousarray(img_rgb), d, float(p.strength), 4.0 * size_scale)
    return img_rgb


def unsharp_u8(img_rgb: np.ndarray, p: ClassicalParams, size_scale: float = 1.0) -> np.ndarray:
    import cv2
    if p.sharpen_amount <= 0:
        return img_rgb
    x = img_rgb.astype(np.float32)
    blur = cv2.GaussianBlur(x, (0, 0), sigmaX=max(0.3, p.sharpen_sigma * size_scale))
    return np.clip(x + p.sharpen_amount * (x - blur), 0, 255).round().astype(np.uint8)


def classical_restore(x: torch.Tensor, p: ClassicalParams) -> torch.Tensor:
    """Denoise + unsharp mask of faces [N,3,S,S] 0..1 -> same shape, 8-bit values."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected faces [N,3,S,S], got {tuple(x.shape)}")
    scale = x.shape[-1] / 512
    u8 = (x.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    out = [unsharp_u8(denoise_u8(img, p, scale), p, scale) for img in u8]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().div(255).to(x.device)


def load_params(path: str | Path | None = None) -> dict[str, ClassicalParams]:
    """{severity: ClassicalParams} from the tuning record (``classical_params.json``)."""
    path = Path(path) if path else PARAMS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `python -m facerefine.lab.eval.tune_classical` once "
                                f"(grid search on training London faces) to create it")
    data = json.loads(path.read_text())
    return {name: ClassicalParams(**entry["params"]) for name, entry in data["severities"].items()}
