"""Temporal smoothing of face landmarks: a causal One-Euro filter, and a zero-phase offline variant.

The One-Euro filter (Casiez, Roussel & Vogel, CHI 2012) is an adaptive low-pass: at rest the cut-off
is ``min_cutoff`` Hz (steady crop boxes), and it rises with the speed of the signal (``beta``), so a
moving face is followed without lag. It is causal (no look-ahead) and needs one sample per call.

For offline work, ``smooth_sequence(..., lookahead=True)`` runs the filter forwards and backwards
and averages the two passes, which cancels the lag of each direction (zero phase).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class SmoothOptions:
    min_cutoff: float = 1.0     # Hz: lower = steadier at rest, more lag on slow drifts
    beta: float = 0.05          # speed coefficient: higher = less lag on fast moves
    d_cutoff: float = 1.0       # Hz: cut-off of the derivative estimate
    fps: float = 25.0           # sample rate when no timestamps are given

    def __post_init__(self) -> None:
        if self.min_cutoff <= 0 or self.d_cutoff <= 0 or self.fps <= 0 or self.beta < 0:
            raise ValueError("min_cutoff, d_cutoff and fps must be > 0 and beta >= 0")


def _alpha(cutoff, dt: float):
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """Causal One-Euro filter over arrays of any fixed shape (e.g. 5x2 landmarks).

    The speed used to open the cut-off is the largest per-point speed normalised by ``scale``
    (pass the face size in pixels so that the same settings work for small and large faces).
    """

    def __init__(self, options: SmoothOptions = SmoothOptions()):
        self.options = options
        self.x: Optional[np.ndarray] = None
        self.dx: Optional[np.ndarray] = None
        self.t: Optional[float] = None

    def reset(self) -> None:
        self.x = self.dx = self.t = None

    def __call__(self, value: np.ndarray, t: Optional[float] = None, scale: float = 1.0) -> np.ndarray:
        value = np.asarray(value, dtype=np.float64)
        o = self.options
        if t is None:
            t = (self.t + 1.0 / o.fps) if self.t is not None else 0.0
        if self.x is None or self.x.shape != value.shape:
            self.x, self.dx, self.t = value.copy(), np.zeros_like(value), t
            return value.copy()
        dt = t - self.t
        if dt <= 0:
            dt = 1.0 / o.fps
        self.t = t
        dx = (value - self.x) / dt
        self.dx = self.dx + _alpha(o.d_cutoff, dt) * (dx - self.dx)
        pts = self.dx.reshape(-1, 2) if self.dx.size % 2 == 0 else self.dx.reshape(-1, 1)
        speed = float(np.linalg.norm(pts, axis=1).max()) / max(float(scale), 1e-6)
        cutoff = o.min_cutoff + o.beta * speed * 100.0  # speed in face sizes per second, x100 -> comparable Hz
        self.x = self.x + _alpha(cutoff, dt) * (value - self.x)
        return self.x.copy()


def smooth_sequence(values: np.ndarray, options: SmoothOptions = SmoothOptions(), lookahead: bool = False,
                    scale: Optional[np.ndarray] = None) -> np.ndarray:
    """Smooth a sequence [T, ...]. Causal by default; ``lookahead`` averages a forward and a backward pass."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return values.copy()
    scale = np.ones(len(values)) if scale is None else np.broadcast_to(np.asarray(scale, float), (len(values),))
    fwd = OneEuroFilter(options)
    out = np.stack([fwd(v, scale=s) for v, s in zip(values, scale)])
    if not lookahead:
        return out
    bwd = OneEuroFilter(options)
    back = np.stack([bwd(v, scale=s) for v, s in zip(values[::-1], scale[::-1])])[::-1]
    return (out + back) / 2.0


def face_scale(landmarks: np.ndarray) -> float:
    """A face size in pixels from 5 landmarks: eye distance + eye-to-mouth distance."""
    m = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    eyes = np.linalg.norm(m[1] - m[0])
    mouth = np.linalg.norm((m[3] + m[4]) / 2 - (m[0] + m[1]) / 2)
    return float(max(eyes + mouth, 1.0))


def jitter(landmarks: np.ndarray, truth: Optional[np.ndarray] = None) -> float:
    """Landmark shake in pixels: the mean size of the second frame-to-frame difference (acceleration) of
    the landmark error against ``truth`` (or of the landmarks themselves without it). A steady lag on a
    smooth path does not count; frame-to-frame noise does (white noise of std s scores about 2.4 s)."""
    x = np.asarray(landmarks, dtype=np.float64)
    if truth is not None:
        x = x - np.asarray(truth, dtype=np.float64)
    if len(x) < 3:
        return 0.0
    return float(np.linalg.norm(np.diff(x, n=2, axis=0), axis=-1).mean())


def drift(landmarks: np.ndarray, truth: np.ndarray) -> float:
    """Root-mean-square landmark error in pixels (includes the lag a causal filter adds)."""
    err = np.asarray(landmarks, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    return float(np.sqrt((err ** 2).sum(-1).mean()))
