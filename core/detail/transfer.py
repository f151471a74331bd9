"""Detail band, detail deficit, colour matching and flow registration of one face onto another.

Used by reference detail (a photo of the same person, core/refine/reference_detail.py) and exemplar detail
(the nearest bundled face, core/detail/exemplars.py). Arrays are [S,S,3] float32 RGB 0..1 aligned crops;
lengths in pixels are given for a 512 crop and scale with the crop side.
"""
from __future__ import annotations

import numpy as np

BAND_SIGMA = 4.0             # detail band: finer than a Gaussian of this sigma, in pixels of a 512 crop
TOLERANCE = 0.06             # low-frequency disagreement (0..1 units) where the confidence falls to 1/e
FLOW_SIZE = 256              # registration runs at this side (at most)


def face_box(landmarks: np.ndarray, size: int) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 (pixels) around eyes, brows, nose and mouth from 5 landmarks in crop fractions."""
    lm = np.asarray(landmarks, np.float64) * size
    d = max(float(np.linalg.norm(lm[1] - lm[0])), 8.0)
    x0, x1 = lm[:, 0].min() - 0.5 * d, lm[:, 0].max() + 0.5 * d
    y0, y1 = lm[:2, 1].mean() - 0.6 * d, lm[3:, 1].mean() + 0.4 * d
    clip = lambda v: int(np.clip(round(v), 0, size))  # noqa: E731
    return clip(x0), clip(y0), max(clip(x1), clip(x0) + 1), max(clip(y1), clip(y0) + 1)


def match_colours(reference: np.ndarray, restored: np.ndarray, box) -> np.ndarray:
    """The reference with the restored face's per-channel mean and spread inside the box."""
    import cv2
    x0, y0, x1, y1 = box
    mean_r, std_r = cv2.meanStdDev(np.ascontiguousarray(restored[y0:y1, x0:x1]))
    mean_f, std_f = cv2.meanStdDev(np.ascontiguousarray(reference[y0:y1, x0:x1]))
    gain = (std_r / (std_f + 1e-4)).ravel()
    bias = mean_r.ravel() - mean_f.ravel() * gain
    return reference * gain.astype(np.float32) + bias.astype(np.float32)


def detail_band(img: np.ndarray, band_sigma: float = BAND_SIGMA, crop_side: int | None = None) -> np.ndarray:
    """The image minus its Gaussian blur (``band_sigma`` in pixels of a 512 crop; ``crop_side``: the side of
    the crop ``img`` comes from, when it is a window of one)."""
    import cv2
    return img - cv2.GaussianBlur(img, (0, 0), band_sigma * (crop_side or img.shape[0]) / 512.0)


def detail_deficit(restored_band: np.ndarray, reference_band: np.ndarray, box) -> float:
    """1 - RMS(restored band) / RMS(reference band) inside the box: 0 = as detailed as the reference."""
    x0, y0, x1, y1 = box
    energy_ref = float((reference_band[y0:y1, x0:x1] ** 2).mean())
    energy_out = float((restored_band[y0:y1, x0:x1] ** 2).mean())
    return 1.0 - float(np.sqrt(energy_out / max(energy_ref, 1e-12)))


def deficit_weight(deficit: float, deficit_range) -> float:
    """The deficit mapped linearly from ``deficit_range`` to 0..1 of the transfer."""
    lo, hi = deficit_range
    return float(np.clip((deficit - lo) / max(hi - lo, 1e-6), 0.0, 1.0))


def grey_u8(img: np.ndarray, size: int, blur: float) -> np.ndarray:
    """Grey uint8 at ``size`` x ``size`` (area-resized), Gaussian-blurred by ``blur`` pixels (the flow's input)."""
    import cv2
    small = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA) if img.shape[:2] != (size, size) else img
    grey = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2GRAY)
    if blur > 0:
        grey = cv2.GaussianBlur(grey, (0, 0), blur)
    return (grey.clip(0, 1) * 255.0 + 0.5).astype(np.uint8)


def new_flow():
    import cv2
    return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)


def register(restored: np.ndarray, reference: np.ndarray, tolerance: float = TOLERANCE, flow=None,
             crop_side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The reference warped onto the restored face by dense optical flow (OpenCV DIS, on low-passed grey), and a
    confidence map [S,S] (1 where both agree at low frequencies, falling to 0 where they disagree: an open
    mouth, hair over the brow, a flow error). Square arrays of one size."""
    import cv2
    size = restored.shape[0]
    s = (crop_side or size) / 512.0
    flow = flow or new_flow()
    g = min(max(round(FLOW_SIZE * size / (crop_side or size)), 8), size)
    field_ = flow.calc(grey_u8(restored, g, 1.0), grey_u8(reference, g, 1.0), None)  # restored(x) ~ ref(x+flow)
    if g != size:
        field_ = cv2.resize(field_, (size, size), interpolation=cv2.INTER_LINEAR) * (size / g)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    warped = cv2.remap(reference, xs + field_[..., 0], ys + field_[..., 1], cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
    # low-frequency agreement, computed at a quarter of the side (it is smooth) and scaled back up
    q = 4
    small = max(size // q, 8)
    low = lambda a: cv2.GaussianBlur(cv2.resize(a, (small, small), interpolation=cv2.INTER_AREA),  # noqa: E731
                                     (0, 0), 8.0 * s / q)
    disagreement = cv2.GaussianBlur(np.abs(low(warped) - low(restored)).mean(axis=2), (0, 0), 4.0 * s / q)
    confidence = cv2.resize(np.exp(-(disagreement / tolerance) ** 2).astype(np.float32), (size, size),
                            interpolation=cv2.INTER_LINEAR)
    return warped, confidence


def register_window(restored: np.ndarray, reference: np.ndarray, tolerance: float = TOLERANCE, flow=None,
                    crop_side: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """:func:`register` for a (possibly non-square) window of a ``crop_side`` crop: both are edge-padded to a
    square for the flow, and the result is cut back."""
    import cv2
    h, w = restored.shape[:2]
    n = max(h, w)
    pad = lambda a: cv2.copyMakeBorder(a, 0, n - h, 0, n - w, cv2.BORDER_REPLICATE)  # noqa: E731
    warped, confidence = register(pad(restored), pad(reference), tolerance, flow, crop_side=crop_side)
    return warped[:h, :w], confidence[:h, :w]


__all__ = ["BAND_SIGMA", "FLOW_SIZE", "TOLERANCE", "deficit_weight", "detail_band", "detail_deficit", "face_box",
           "grey_u8", "match_colours", "new_flow", "register",
           "register_window"]
