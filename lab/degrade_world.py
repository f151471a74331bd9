"""Degradations of the world: a second-order pipeline in the spirit of Real-ESRGAN, for one uint8 sample.

``DegradeWorld(hold_out=...)(hq, rng) -> lq`` takes an RGB ``uint8`` image ``[H, W, 3]`` and returns a
degraded ``uint8`` image of the same shape. Every random draw comes from the ``np.random.Generator``
passed in, so the same generator state gives the same bytes on the same machine and library build
(numpy, OpenCV, and libx264 and the H.264 decoder with one thread, are deterministic). Issue 25, item 1.

The order follows what happens to a real photo: the print ages (old_photo), the camera or scanner blurs
it, it is resized, the sensor adds noise, it is saved, then a second generation of the same (re-upload:
blur, resize, noise), and at the end it is compressed (JPEG / H.264) and sharpened or band-limited
(ringing), either at the low resolution or after being resized back up to the patch size.

Families (``FAMILIES``) and their steps. Pixel sizes are stated at ``reference_size`` = 160 px (the
training patch) and multiplied by ``s = min(H, W) / reference_size``; factors, noise levels and
qualities do not scale. "p" is the probability that a family is drawn for a sample, then of each step
inside it (in training mode; ``degrade_family_only`` draws its family with p = 1).

=========  =====================================  =============================================  ======
family     step                                   range                                          p
=========  =====================================  =============================================  ======
old_photo  (applied first, to the "print")                                                       0.12
           fading / contrast loss                 contrast 0.45-0.9 toward a paper level          0.8
                                                  100-200, blacks lifted 0-40
           tone: grey / sepia / yellowed          sepia strength 0.6-1; yellowed: blue x           0.8
                                                  0.70-0.90, saturation 0.4-0.9 (1/3 each)
           scan halftone                          dot screen pitch 2-4 px, 45 deg (grey) or       0.3
                                                  15/75/0 deg per channel; softness 1.5-4;
                                                  mixed 0.15-0.5
           dust and scratches                     0-12 specks r 0.5-1.5 px, 0-3 curved hairlines   0.5
blur       round 1, at full size                  kernel size 7-21 px, sigma 0.2-3 px, motion      0.9: 1
                                                  length 3-15 px
           round 2, at the size after round-1     size 5-13 px, sigma 0.2-1.2 px (of the           0.5
           resize                                 smaller image), motion length 3-9 px
           kernel shapes (each round)             isotropic Gaussian 0.35; anisotropic (sigma_x,
                                                  sigma_y independent, rotation 0-180 deg) 0.25;
                                                  generalised Gaussian exp(-d^beta/2), beta
                                                  0.5-4 (iso 0.07, aniso 0.07); plateau
                                                  1/(1+d^beta), beta 1-2 (iso 0.06, aniso 0.05);
                                                  motion (straight or shaky trajectory, any
                                                  angle) 0.15. Size >= 2*ceil(1.5 sigma)+1.
resize     total factor F                         x1-x16 down, log2 F = 4 u^1.5 (median x2.8,      0.85
                                                  >= x8 in 17 %); round 1 F^v (v 0.5-1), round 2
                                                  the rest
           down kernels (each round)              area 0.35, bilinear 0.25, bicubic 0.25,
                                                  nearest 0.15 (no antialiasing: aliasing)
           back up to the patch size (last)       bicubic 0.42, bilinear 0.35, Lanczos 0.15,
                                                  nearest 0.03, area 0.05
noise      round 1 / round 2                      Gaussian sigma 1-15 / 1-10 (of 255), or          0.75:
                                                  Poisson (shot) scale 0.05-2 / 0.05-1.2           0.8/0.5
                                                  (std 11*scale at mid grey); Gaussian 0.6,
                                                  Poisson 0.4; grey (same in R, G, B) 0.35
jpeg       round 1 (after round-1 noise)          quality 40-95 (libjpeg via OpenCV, 4:2:0)        0.8: 0.35
           final (see "final" below)              quality 25-95                                    1
video      final: H.264 (libx264 through PyAV)    3 frames (neighbours shifted 0.3-2 px), middle   0.12
                                                  frame decoded; CRF 18-42 (p 0.7) or 0.03-0.4
                                                  bit/pixel; preset ultrafast / veryfast /
                                                  medium; yuv420p, padded to even >= 16 px
ringing    final                                  sinc (circular low-pass) kernel, cutoff          0.2
                                                  pi/5-pi (size >= 13) or pi/3-pi, size 7-21 px,
                                                  p 0.7; else over-sharpening (unsharp mask
                                                  amount 0.5-2, sigma 0.8-2.5 px) p 0.3
=========  =====================================  =============================================  ======

final: if the image was resized down, the compression (video then JPEG) and ringing steps run at the low
resolution with p 0.6 (a small photo saved, then upscaled by the viewer / the crop step) and after
resizing back up otherwise (a large blurred photo saved); ringing comes before or after the compression
with p 0.5 each. Values are clipped to 0..255 after every step and rounded to uint8 before every codec
and at the end.

Hold out: ``DegradeWorld(hold_out=("video",))`` never draws anything of a held-out family (its random
draws are skipped too). ``DEFAULT_HOLD_OUT = ("video",)``: H.264 is a real codec this pipeline never
trains on, with its own artefacts (4x4/8x8 integer transforms, intra prediction, in-loop deblocking,
motion-compensated inter frames, fixed 4:2:0 chroma), so the gain on it measures whether the model learned
to clean up compression in general rather than libjpeg's 8x8 blocks; it is also the family users meet in
video frames (``docs/video.md``) and, at 5-14 ms a call, the most expensive to train with. The other
candidate, old_photo, is a poor test: its fading and sepia move colours that a restorer trained without
them is right to keep, so "PSNR >= LQ + 0.5 dB" on it would ask the model to guess colours it never
learned to restore.

The generalisation test set: ``degrade_family_only(hq, "video", rng)`` = a mild base (Gaussian blur
sigma 0.3-1.2 px, x1.5-3 down (area or bicubic), Gaussian noise 1-4/255, bicubic back up) plus the family
at its full training range with p = 1 (``base=False``: the family alone).

Severity (``DegradeWorld()``, 800 draws over 8 FFHQ faces, PSNR of LQ vs HQ): 160 px crops of 256² faces
median 23.4 dB, 5-95 % 16.0-31.1 dB, 7.5 % above 30 dB, 20 % below 20 dB; whole faces resized to 160 px
median 23.2 dB.

Speed: mean ms per sample over 400 draws on a natural-spectrum image, one OpenCV thread, this project's
shared 2-core CPU (``python -m facerefine.lab.degrade_world --bench``), at two machine loads:

===========  ======================  ==========================  =======================
patch        training (video held    with video (hold_out=())    one H.264 round trip at
             out), load 1.3 / 4.4    load 1.3 / 4.4              full size
===========  ======================  ==========================  =======================
160 x 160    2.4 / 3.4               2.7 / 4.2                   5-10
256 x 256    5.5 / 8.7               8.2 / 11.6                  10-14
===========  ======================  ==========================  =======================

``DegradeWorld.degrade(hq, rng)`` also returns the list of steps it applied (family, step, parameters).
Channel order matters only for JPEG / H.264 chroma, grey and sepia: the input is RGB.
"""
from __future__ import annotations

import fractions
import math
from typing import Iterable, Optional

import numpy as np

__all__ = ["DEFAULT_HOLD_OUT", "FAMILIES", "FAMILY_PROB", "DegradeWorld", "degrade_family_only"]

FAMILIES = ("old_photo", "blur", "resize", "noise", "jpeg", "video", "ringing")
DEFAULT_HOLD_OUT = ("video",)
FAMILY_PROB = {"old_photo": 0.12, "blur": 0.9, "resize": 0.85, "noise": 0.75, "jpeg": 0.8, "video": 0.12,
               "ringing": 0.2}
REFERENCE_SIZE = 160
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


# -- small helpers -----------------------------------------------------------------------------------
def _cv2():
    """OpenCV, single-threaded: its parallel filters and resizes do not give the same bytes from run to run
    (tests/test_degrade_world.py failed about one run in two), and every sample must be reproducible.
    The trainer draws samples in worker processes for parallelism instead."""
    import cv2
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)
    return cv2


def _choice(rng: np.random.Generator, options: dict):
    """One key of ``options`` (key -> probability)."""
    keys = list(options)
    p = np.array([options[k] for k in keys], np.float64)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _odd(n: float, lo: int = 1) -> int:
    n = max(lo, round(n))
    return n if n % 2 else n + 1


def _fit_kernel_size(ks: int, h: int, w: int) -> int:
    """Largest odd kernel size <= ks that fits the image (OpenCV's reflected border needs it)."""
    m = min(h, w)
    cap = m if m % 2 else m - 1
    return max(1, min(ks, cap))


def _luma(x: np.ndarray) -> np.ndarray:
    return x @ _LUMA


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)  # round half up (x >= 0 after clipping)


def _filter(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    cv2 = _cv2()
    h, w = x.shape[:2]
    ks = _fit_kernel_size(k.shape[0], h, w)
    if ks < k.shape[0]:  # crop the kernel to the image (tiny images after a strong resize)
        c = (k.shape[0] - ks) // 2
        k = k[c:c + ks, c:c + ks]
        k = k / max(float(k.sum()), 1e-8)
    if ks <= 1:
        return x
    k = k.astype(np.float32)
    if ks < 13 or max(h, w) <= 224:
        return cv2.filter2D(x, -1, k, borderType=cv2.BORDER_REFLECT_101)
    # OpenCV switches large kernels to a DFT path that is ~10x slower above ~240 px; 128-px tiles of the
    # once-padded image stay on the fast path and give identical values (measured: 5.5 -> 2.3 ms at 256²)
    p, t = ks // 2, 128
    xp = cv2.copyMakeBorder(x, p, p, p, p, cv2.BORDER_REFLECT_101)
    out = np.empty_like(x)
    for r in range(0, h, t):
        for c in range(0, w, t):
            r1, c1 = min(h, r + t), min(w, c + t)
            blk = cv2.filter2D(xp[r:r1 + 2 * p, c:c1 + 2 * p], -1, k, borderType=cv2.BORDER_CONSTANT)
            out[r:r1, c:c1] = blk[p:p + r1 - r, p:p + c1 - c]
    return out


# -- blur kernels ------------------------------------------------------------------------------------
def _grid(ks: int):
    r = np.arange(ks, dtype=np.float64) - ks // 2
    return np.meshgrid(r, r)  # xx, yy


def _shaped_kernel(ks: int, sx: float, sy: float, theta: float, shape: str, beta: float) -> np.ndarray:
    """Gaussian / generalised Gaussian / plateau kernel with covariance R diag(sx², sy²) Rᵀ."""
    xx, yy = _grid(ks)
    c, s = math.cos(theta), math.sin(theta)
    u = c * xx + s * yy
    v = -s * xx + c * yy
    d = (u / sx) ** 2 + (v / sy) ** 2  # Mahalanobis distance², >= 0
    if shape == "gaussian":
        k = np.exp(-0.5 * d)
    elif shape == "generalized":
        k = np.exp(-0.5 * d ** beta)
    else:  # plateau
        k = 1.0 / (1.0 + d ** beta)
    return (k / k.sum()).astype(np.float32)


def _motion_kernel(length: float, angle: float, shaky: bool, rng: np.random.Generator) -> np.ndarray:
    """Line (or camera-shake trajectory) of ``length`` px at ``angle`` rad, anti-aliased, normalised."""
    cv2 = _cv2()
    ks = _odd(length + 3, 3)
    sub = 8  # sub-pixel precision of cv2 drawing (shift=3 bits)
    canvas = np.zeros((ks, ks), np.float32)
    n = max(2, round(length))
    if shaky:  # random walk with momentum, rescaled to the requested extent
        steps = np.cumsum(rng.normal(0.0, 1.0, (n, 2)) * 0.6 + np.array([math.cos(angle), math.sin(angle)]), 0)
        steps -= steps.mean(0)
        extent = np.abs(steps).max() * 2
        pts = steps * (length / max(extent, 1e-6))
    else:
        t = np.linspace(-0.5, 0.5, n)[:, None]
        pts = t * length * np.array([[math.cos(angle), math.sin(angle)]])
    pts = np.round((pts + ks // 2) * sub).astype(np.int32)
    cv2.polylines(canvas, [pts.reshape(-1, 1, 2)], False, 1.0, thickness=1, lineType=cv2.LINE_AA, shift=3)
    total = float(canvas.sum())
    if total <= 0:
        canvas[ks // 2, ks // 2] = 1.0
        total = 1.0
    return canvas / total


def _random_kernel(rng: np.random.Generator, s: float, round2: bool) -> tuple[np.ndarray, dict]:
    kind = _choice(rng, {"iso": 0.35, "aniso": 0.25, "generalized_iso": 0.07, "generalized_aniso": 0.07,
                         "plateau_iso": 0.06, "plateau_aniso": 0.05, "motion": 0.15})
    if round2:
        sig_lo, sig_hi, ks_lo, ks_hi, mot_hi = 0.2, 1.2, 5, 13, 9
    else:
        sig_lo, sig_hi, ks_lo, ks_hi, mot_hi = 0.2, 3.0, 7, 21, 15
    if kind == "motion":
        length = float(rng.uniform(3.0, mot_hi)) * s
        angle = float(rng.uniform(0.0, math.pi))
        shaky = bool(rng.random() < 0.5)
        if length < 1.5:
            return np.ones((1, 1), np.float32), {"kernel": "motion", "length": length}
        return _motion_kernel(length, angle, shaky, rng), {"kernel": "motion", "length": round(length, 2),
                                                             "angle": round(math.degrees(angle), 1),
                                                             "shaky": shaky}
    sx = float(rng.uniform(sig_lo, sig_hi)) * s
    sy = float(rng.uniform(sig_lo, sig_hi)) * s if kind.endswith("aniso") else sx
    theta = float(rng.uniform(0.0, math.pi)) if kind.endswith("aniso") else 0.0
    shape = kind.split("_")[0] if "_" in kind else "gaussian"
    shape = {"iso": "gaussian", "aniso": "gaussian"}.get(shape, shape)
    beta = float(rng.uniform(0.5, 4.0)) if shape == "generalized" else float(rng.uniform(1.0, 2.0))
    ks = _odd(rng.integers(ks_lo, ks_hi + 1) * s, 3)
    ks = max(ks, _odd(2 * math.ceil(1.5 * max(sx, sy)) + 1, 3))  # never a box: cover +-1.5 sigma
    ks = min(ks, _odd(ks_hi * max(s, 1.0) + 6))
    sx, sy = max(sx, 0.05), max(sy, 0.05)
    info = {"kernel": kind, "size": ks, "sigma": (round(sx, 2), round(sy, 2)),
            "angle": round(math.degrees(theta), 1)}
    if shape != "gaussian":
        info["beta"] = round(beta, 2)
    return _shaped_kernel(ks, sx, sy, theta, shape, beta), info


def _sinc_kernel(ks: int, cutoff: float) -> np.ndarray:
    """Circular low-pass (2-D sinc / Airy) kernel: the inverse DFT of a disk of radius ``cutoff`` rad/px."""
    n = 64 if ks <= 31 else 2 * ks + 2
    f = np.fft.fftfreq(n) * 2 * math.pi
    fx, fy = np.meshgrid(f, f)
    disk = (fx ** 2 + fy ** 2 <= cutoff ** 2).astype(np.float64)
    k = np.fft.fftshift(np.real(np.fft.ifft2(disk)))
    c = n // 2
    k = k[c - ks // 2:c + ks // 2 + 1, c - ks // 2:c + ks // 2 + 1]
    return (k / k.sum()).astype(np.float32)


# -- resize ------------------------------------------------------------------------------------------
_DOWN = {"area": 0.35, "bilinear": 0.25, "bicubic": 0.25, "nearest": 0.15}
_UP = {"bicubic": 0.42, "bilinear": 0.35, "lanczos": 0.15, "nearest": 0.03, "area": 0.05}


def _resize(x: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    cv2 = _cv2()
    interp = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
              "nearest": cv2.INTER_NEAREST, "lanczos": cv2.INTER_LANCZOS4}[mode]
    h, w = size
    if x.shape[:2] == (h, w):
        return x
    out = cv2.resize(x, (w, h), interpolation=interp)
    return np.clip(out, 0, 255)


# -- noise -------------------------------------------------------------------------------------------
def _gaussian_noise(x: np.ndarray, sigma: float, grey: bool, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    n = rng.standard_normal((h, w, 1 if grey else 3), dtype=np.float32) * np.float32(sigma)
    return np.clip(x + n, 0, 255)


def _poisson_noise(x: np.ndarray, scale: float, grey: bool, rng: np.random.Generator) -> np.ndarray:
    """Shot noise as in Real-ESRGAN (photon counts of 8-bit levels) times ``scale``.

    Counts >= 30 use the Gaussian limit N(λ, λ) (several times faster than numpy's Poisson sampler, and
    within 1% of its variance there); darker pixels are drawn exactly.
    """
    lam = (_luma(x)[..., None] if grey else x).astype(np.float32)
    noise = rng.standard_normal(lam.shape, dtype=np.float32) * np.sqrt(lam)
    dark = lam < 30.0
    if dark.any():
        ld = lam[dark]
        noise[dark] = rng.poisson(ld).astype(np.float32) - ld
    return np.clip(x + noise * np.float32(scale), 0, 255)


def _noise(x: np.ndarray, rng: np.random.Generator, round2: bool) -> tuple[np.ndarray, dict]:
    grey = bool(rng.random() < 0.35)
    if rng.random() < 0.6:
        sigma = float(rng.uniform(1.0, 10.0 if round2 else 15.0))
        return _gaussian_noise(x, sigma, grey, rng), {"step": "gaussian", "sigma": round(sigma, 2), "grey": grey}
    scale = float(rng.uniform(0.05, 1.2 if round2 else 2.0))
    return _poisson_noise(x, scale, grey, rng), {"step": "poisson", "scale": round(scale, 3), "grey": grey}


# -- codecs ------------------------------------------------------------------------------------------
def _jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    cv2 = _cv2()
    bgr = np.ascontiguousarray(_to_u8(x)[..., ::-1])
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - libjpeg always encodes a valid uint8 image
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32)


def _video(x: np.ndarray, rng: np.random.Generator, s: float) -> tuple[np.ndarray, dict]:
    """H.264 round trip: 3 frames (the patch, and two copies shifted by a little motion), middle one back."""
    import av

    cv2 = _cv2()
    h, w = x.shape[:2]
    # edge-replicated to whole macroblocks, and a width whose planes need no row padding: libx264 otherwise reads
    # the uninitialised bytes past the row end and the round trip stops being deterministic
    ph, pw = -(-max(h, 16) // 16) * 16, -(-max(w, 64) // 64) * 64
    img = _to_u8(x)
    if (ph, pw) != (h, w):
        img = cv2.copyMakeBorder(img, 0, ph - h, 0, pw - w, cv2.BORDER_REPLICATE)
    shift = rng.uniform(0.3, 2.0) * max(s, 0.25)
    ang = rng.uniform(0.0, 2 * math.pi)
    dx, dy = shift * math.cos(ang), shift * math.sin(ang)
    frames = []
    for k in (-1, 0, 1):
        if k == 0:
            frames.append(img)
        else:
            m = np.float32([[1, 0, k * dx], [0, 1, k * dy]])
            frames.append(cv2.warpAffine(img, m, (pw, ph), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    preset = _choice(rng, {"ultrafast": 0.25, "veryfast": 0.45, "medium": 0.30})
    opts = {"preset": preset, "threads": "1"}
    info: dict = {"step": "h264", "preset": preset, "motion_px": round(float(shift), 2)}
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = pw, ph, "yuv420p"
    enc.time_base = fractions.Fraction(1, 25)
    enc.framerate = fractions.Fraction(25, 1)
    if rng.random() < 0.7:
        crf = int(rng.integers(18, 43))
        opts["crf"] = str(crf)
        info["crf"] = crf
    else:
        bpp = float(rng.uniform(0.03, 0.4))
        enc.bit_rate = max(1000, int(bpp * pw * ph * 25))
        info["bits_per_pixel"] = round(bpp, 3)
    enc.options = opts
    packets = []
    for i, frame in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24").reformat(format="yuv420p")
        vf.pts = i
        packets += enc.encode(vf)
    packets += enc.encode(None)
    dec = av.CodecContext.create("h264", "r")
    dec.options = {"threads": "1"}
    out = []
    for p in packets:
        out += dec.decode(p)
    out += dec.decode(None)
    if len(out) != 3:  # pragma: no cover - x264 returns every frame once flushed
        raise RuntimeError(f"H.264 round trip returned {len(out)} frames instead of 3")
    mid = sorted(out, key=lambda f: f.pts)[1].to_ndarray(format="rgb24")
    return mid[:h, :w].astype(np.float32), info


# -- old photo ---------------------------------------------------------------------------------------
def _halftone(x: np.ndarray, rng: np.random.Generator, s: float, grey: bool) -> tuple[np.ndarray, dict]:
    h, w = x.shape[:2]
    pitch = float(rng.uniform(2.0, 4.0)) * max(s, 0.5)
    soft = float(rng.uniform(1.5, 4.0))
    mix = float(rng.uniform(0.15, 0.5))
    phase = rng.uniform(0.0, 2 * math.pi, 2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angles = (45.0,) if grey else (15.0, 75.0, 0.0)
    v = x / 255.0
    out = np.empty_like(v)
    for c in range(3):
        a = math.radians(angles[0 if grey else c])
        u = (math.cos(a) * xx + math.sin(a) * yy) * (2 * math.pi / pitch) + phase[0]
        t = (-math.sin(a) * xx + math.cos(a) * yy) * (2 * math.pi / pitch) + phase[1]
        screen = 0.5 + 0.25 * (np.cos(u) + np.cos(t))  # 0..1 dot screen
        src = _luma(v) if grey else v[..., c]
        out[..., c] = np.clip(0.5 + soft * (src - screen), 0.0, 1.0)
        if grey:
            out[..., 1] = out[..., 2] = out[..., 0]
            break
    y = (1 - mix) * x + mix * out * 255.0
    return y.astype(np.float32), {"step": "halftone", "pitch": round(pitch, 2), "mix": round(mix, 2),
                                  "softness": round(soft, 2), "grey": grey}


def _dust(x: np.ndarray, rng: np.random.Generator, s: float) -> tuple[np.ndarray, dict]:
    cv2 = _cv2()
    h, w = x.shape[:2]
    mask = np.zeros((h, w), np.float32)
    n_dust = int(rng.integers(0, 13))
    n_lines = int(rng.integers(0, 4))
    if n_dust + n_lines == 0:
        n_dust = 1
    sub = 8
    for _ in range(n_dust):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = float(rng.uniform(0.5, 1.5)) * max(s, 0.3)
        cv2.circle(mask, (int(cx * sub), int(cy * sub)), max(1, int(r * sub)), float(rng.uniform(0.4, 1.0)),
                   -1, cv2.LINE_AA, 3)
    for _ in range(n_lines):
        n = 4
        p0 = np.array([rng.uniform(0, w), rng.uniform(0, h)])
        ang = rng.uniform(0, math.pi)
        length = rng.uniform(0.2, 0.8) * max(h, w)
        t = np.linspace(0, 1, n)[:, None]
        pts = p0 + t * length * np.array([math.cos(ang), math.sin(ang)]) + rng.normal(0, 0.02 * length, (n, 2))
        cv2.polylines(mask, [np.round(pts * sub).astype(np.int32).reshape(-1, 1, 2)], False,
                      float(rng.uniform(0.3, 0.8)), 1, cv2.LINE_AA, 3)
    bright = bool(rng.random() < 0.6)  # dust on a negative scans white, on a print dark
    level = np.float32(rng.uniform(200, 255) if bright else rng.uniform(0, 60))
    m = mask[..., None]
    return x * (1 - m) + level * m, {"step": "dust", "specks": n_dust, "scratches": n_lines, "bright": bright}


def _old_photo(x: np.ndarray, rng: np.random.Generator, s: float, log: list) -> np.ndarray:
    do_fade = rng.random() < 0.8
    do_tone = rng.random() < 0.8
    do_half = rng.random() < 0.3
    do_dust = rng.random() < 0.5
    if not (do_fade or do_tone or do_half or do_dust):
        do_fade = True
    grey_tone = False
    if do_tone:
        tone = _choice(rng, {"grey": 1 / 3, "sepia": 1 / 3, "yellowed": 1 / 3})
        lum = _luma(x)[..., None]
        if tone == "grey":
            x = np.repeat(lum, 3, axis=2)
            grey_tone = True
            log.append({"family": "old_photo", "step": "grey"})
        elif tone == "sepia":
            tint = np.array([1.0, rng.uniform(0.78, 0.92), rng.uniform(0.55, 0.78)], np.float32)
            tint /= float(tint @ _LUMA)
            a = float(rng.uniform(0.6, 1.0))
            x = (1 - a) * x + a * lum * tint
            log.append({"family": "old_photo", "step": "sepia", "strength": round(a, 2)})
        else:
            sat = float(rng.uniform(0.4, 0.9))
            cast = np.array([1.0, rng.uniform(0.92, 0.99), rng.uniform(0.70, 0.90)], np.float32)
            cast /= float(cast @ _LUMA)
            x = (lum + sat * (x - lum)) * cast
            log.append({"family": "old_photo", "step": "yellowed", "saturation": round(sat, 2)})
        x = np.clip(x, 0, 255).astype(np.float32)
    if do_fade:
        c = float(rng.uniform(0.45, 0.9))
        paper = float(rng.uniform(100, 200))
        lift = float(rng.uniform(0, 40))
        pivot = 0.5 * float(x.mean()) + 0.5 * paper
        x = pivot + c * (x - pivot)
        x = lift + x * (255 - lift) / 255
        x = np.clip(x, 0, 255).astype(np.float32)
        log.append({"family": "old_photo", "step": "fade", "contrast": round(c, 2), "lift": round(lift, 1)})
    if do_half:
        x, info = _halftone(x, rng, s, grey_tone or bool(rng.random() < 0.5))
        log.append({"family": "old_photo", **info})
    if do_dust:
        x, info = _dust(x, rng, s)
        log.append({"family": "old_photo", **info})
    return np.clip(x, 0, 255).astype(np.float32)


# -- the pipeline ------------------------------------------------------------------------------------
class DegradeWorld:
    """Second-order degradation of one RGB uint8 sample (see the module docstring for every range).

    ``hold_out``: families never drawn (default ``DEFAULT_HOLD_OUT``); ``prob``: override the probability
    of a family (``FAMILY_PROB``); ``reference_size``: the patch side at which pixel sizes are stated.
    """

    def __init__(self, hold_out: Iterable[str] = DEFAULT_HOLD_OUT, prob: Optional[dict] = None,
                 reference_size: int = REFERENCE_SIZE):
        hold_out = (hold_out,) if isinstance(hold_out, str) else tuple(hold_out)
        unknown = sorted(set(hold_out) - set(FAMILIES)) + sorted(set(prob or {}) - set(FAMILIES))
        if unknown:
            raise ValueError(f"unknown degradation families {unknown}; known: {list(FAMILIES)}")
        self.hold_out = tuple(f for f in FAMILIES if f in hold_out)
        self.prob = {**FAMILY_PROB, **(prob or {})}
        self.reference_size = int(reference_size)

    def __repr__(self) -> str:
        return f"DegradeWorld(hold_out={self.hold_out!r})"

    @property
    def families(self) -> tuple[str, ...]:
        """The families this instance may draw."""
        return tuple(f for f in FAMILIES if f not in self.hold_out)

    def __call__(self, hq: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.degrade(hq, rng)[0]

    def degrade(self, hq: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
        """(lq, steps): the degraded image and the steps applied, in order."""
        on = {f: bool(rng.random() < self.prob[f]) for f in self.families}
        return _run(hq, rng, on, self.reference_size, base=False)

    def family_only(self, hq: np.ndarray, family: str, rng: np.random.Generator,
                    base: bool = True) -> tuple[np.ndarray, list[dict]]:
        """One family at p = 1 (held out or not), after a mild base when ``base``: (lq, steps)."""
        if family not in FAMILIES:
            raise ValueError(f"unknown degradation family {family!r}; known: {list(FAMILIES)}")
        on = {f: f == family for f in FAMILIES}
        return _run(hq, rng, on, self.reference_size, base=base)


def degrade_family_only(hq: np.ndarray, family: str, rng: np.random.Generator, base: bool = True,
                        reference_size: int = REFERENCE_SIZE) -> np.ndarray:
    """The generalisation test: a mild base (unless ``base=False``) plus ``family`` at p = 1."""
    return DegradeWorld(hold_out=(), reference_size=reference_size).family_only(hq, family, rng, base)[0]


def _check(hq: np.ndarray) -> None:
    if not isinstance(hq, np.ndarray) or hq.dtype != np.uint8 or hq.ndim != 3 or hq.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image [H, W, 3], got "
                         f"{getattr(hq, 'dtype', type(hq))} {getattr(hq, 'shape', '')}")


def _run(hq: np.ndarray, rng: np.random.Generator, on: dict, reference_size: int,
         base: bool) -> tuple[np.ndarray, list[dict]]:
    _check(hq)
    h, w = hq.shape[:2]
    s = min(h, w) / reference_size
    log: list[dict] = []
    x = hq.astype(np.float32)
    if not any(on.values()) and not base:
        return hq.copy(), log

    # the print ages
    if on.get("old_photo"):
        x = _old_photo(x, rng, s, log)

    # resize plan: total factor F in 1..16 split over the two rounds (base: x1.5..3 in round 1)
    f1 = f2 = 1.0
    if on.get("resize"):
        total = float(2.0 ** (4.0 * rng.random() ** 1.5))
        u = float(rng.uniform(0.5, 1.0))
        f1 = total ** u
        f2 = total / f1
    elif base:
        f1 = float(rng.uniform(1.5, 3.0))

    # round 1
    if on.get("blur"):
        k, info = _random_kernel(rng, s, round2=False)
        x = np.clip(_filter(x, k), 0, 255)
        log.append({"family": "blur", "step": "round1", **info})
    elif base:
        sigma = float(rng.uniform(0.3, 1.2)) * s
        k = _shaped_kernel(_odd(2 * math.ceil(2.5 * sigma) + 1, 3), sigma, sigma, 0.0, "gaussian", 1.0)
        x = np.clip(_filter(x, k), 0, 255)
        log.append({"family": "base", "step": "blur", "sigma": round(sigma, 2)})
    if f1 > 1.0:
        size = (max(2, round(h / f1)), max(2, round(w / f1)))
        mode = _choice(rng, _DOWN) if on.get("resize") else _choice(rng, {"area": 0.5, "bicubic": 0.5})
        x = _resize(x, size, mode)
        log.append({"family": "resize" if on.get("resize") else "base", "step": "down1", "factor": round(f1, 3),
                    "mode": mode, "size": size})
    noise2 = False
    if on.get("noise"):
        noise1 = rng.random() < 0.8
        noise2 = rng.random() < 0.5
        if not (noise1 or noise2):
            noise1 = True
        if noise1:
            x, info = _noise(x, rng, round2=False)
            log.append({"family": "noise", "round": 1, **info})
    elif base:
        sigma = float(rng.uniform(1.0, 4.0))
        x = _gaussian_noise(x, sigma, False, rng)
        log.append({"family": "base", "step": "gaussian", "sigma": round(sigma, 2), "grey": False})
    if on.get("jpeg") and rng.random() < 0.35:
        q = int(rng.integers(40, 96))
        x = _jpeg(x, q)
        log.append({"family": "jpeg", "step": "round1", "quality": q})

    # round 2 (a second generation at the reduced size)
    if on.get("blur") and rng.random() < 0.5:
        k, info = _random_kernel(rng, s, round2=True)
        x = np.clip(_filter(x, k), 0, 255)
        log.append({"family": "blur", "step": "round2", **info})
    if f2 > 1.0 + 1e-6:
        ch, cw = x.shape[:2]
        size = (max(2, round(ch / f2)), max(2, round(cw / f2)))
        mode = _choice(rng, _DOWN)
        x = _resize(x, size, mode)
        log.append({"family": "resize", "step": "down2", "factor": round(f2, 3), "mode": mode, "size": size})
    if noise2:
        x, info = _noise(x, rng, round2=True)
        log.append({"family": "noise", "round": 2, **info})

    # final: compression and ringing, at the low resolution or after resizing back up
    small = x.shape[:2] != (h, w)
    up_mode = _choice(rng, _UP) if on.get("resize") else "bicubic"
    at_low = small and rng.random() < 0.6
    ringing_first = rng.random() < 0.5

    def ringing(y: np.ndarray) -> np.ndarray:
        if not on.get("ringing"):
            return y
        if rng.random() < 0.7:
            ks = _odd(rng.integers(7, 22) * max(s, 0.35), 3)
            lo = math.pi / 5 if ks >= 13 else math.pi / 3
            cutoff = float(rng.uniform(lo, math.pi))
            y = np.clip(_filter(y, _sinc_kernel(ks, cutoff)), 0, 255)
            log.append({"family": "ringing", "step": "sinc", "size": ks, "cutoff": round(cutoff, 3)})
        else:
            amount = float(rng.uniform(0.5, 2.0))
            sigma = float(rng.uniform(0.8, 2.5)) * max(s, 0.35)
            k = _shaped_kernel(_odd(2 * math.ceil(2.5 * sigma) + 1, 3), sigma, sigma, 0.0, "gaussian", 1.0)
            y = np.clip(y + amount * (y - _filter(y, k)), 0, 255)
            log.append({"family": "ringing", "step": "unsharp", "amount": round(amount, 2),
                        "sigma": round(sigma, 2)})
        return y

    def compress(y: np.ndarray) -> np.ndarray:
        if on.get("video"):
            y, info = _video(y, rng, s)
            log.append({"family": "video", **info})
        if on.get("jpeg"):
            q = int(rng.integers(25, 96))
            y = _jpeg(y, q)
            log.append({"family": "jpeg", "step": "final", "quality": q})
        return y

    def finals(y: np.ndarray) -> np.ndarray:
        return compress(ringing(y)) if ringing_first else ringing(compress(y))

    if at_low:
        x = finals(x)
    if small:
        x = _resize(x, (h, w), up_mode)
        log.append({"family": "resize" if on.get("resize") else "base", "step": "up", "mode": up_mode})
    if not at_low:
        x = finals(x)
    return _to_u8(x), log


# -- benchmark ---------------------------------------------------------------------------------------
def _bench(sizes=(160, 256), n: int = 400) -> dict:
    """Mean ms per sample on a natural-spectrum (1/f^1.75) test image, one OpenCV thread."""
    import time

    cv2 = _cv2()
    cv2.setNumThreads(1)
    out = {}
    for size in sizes:
        rng = np.random.default_rng(0)
        f = np.sqrt(np.fft.fftfreq(size)[:, None] ** 2 + np.fft.rfftfreq(size)[None, :] ** 2)
        f[0, 0] = 1.0
        spec = (rng.standard_normal(f.shape + (3,)) + 1j * rng.standard_normal(f.shape + (3,))) / f[..., None] ** 1.75
        spec[0, 0] = 0
        x = np.fft.irfft2(spec, s=(size, size), axes=(0, 1))
        hq = np.clip((x - x.mean()) / x.std() * 45 + 120, 0, 255).astype(np.uint8)
        for name, world in (("training", DegradeWorld()), ("with_video", DegradeWorld(hold_out=()))):
            r = np.random.default_rng(1)
            world(hq, r)
            t0 = time.perf_counter()
            for _ in range(n):
                world(hq, r)
            out[f"{size}_{name}_ms"] = round((time.perf_counter() - t0) / n * 1e3, 2)
        r = np.random.default_rng(2)
        t0 = time.perf_counter()
        for _ in range(n // 10):
            _video(hq.astype(np.float32), r, size / REFERENCE_SIZE)
        out[f"{size}_one_h264_at_full_size_ms"] = round((time.perf_counter() - t0) / (n // 10) * 1e3, 2)
    return out


if __name__ == "__main__":  # python -m facerefine.lab.degrade_world --bench
    import json
    import sys

    if "--bench" in sys.argv:
        print(json.dumps(_bench()))
