"""Synthetic LQ/HQ degradation for blind face restoration (seeded, batched torch).

The classic BFR model (GFPGAN / CodeFormer / IQPFR training):

    LQ = JPEG_q( up( down_r( HQ * k_sigma ) + n_delta ) )

with optional colour jitter and grayscale. Every random draw comes from one
``torch.Generator``, so the same seed gives the same LQ batch on any machine.

Default ranges (``DegradeConfig``) are the GFPGAN/CodeFormer ones, stated for
512 px faces (``reference_size``):

==================  ==========================  =====================================
step                range at 512 px             notes
==================  ==========================  =====================================
Gaussian blur       sigma 0.1 .. 10 px          isotropic; chosen with p=1-motion_prob
motion blur         length 3 .. 41 px, any      angle 0..360 deg; p=motion_prob (0.1)
downscale           factor 1 .. 8               bilinear down, bicubic back up
Gaussian noise      sigma 0 .. 20 / 255         per channel; p=1-poisson_prob
Poisson noise       scale 0.05 .. 3             shot noise; p=poisson_prob (0.2)
JPEG                quality 60 .. 100           real libjpeg through torchvision
colour jitter       +-0.05 per channel          p=color_jitter_prob (0 by default)
grayscale           -                           p=gray_prob (0 by default)
==================  ==========================  =====================================

Blur sizes and the downscale factor are physical (they scale with the face
size): at a training size S they are multiplied by ``S / reference_size``
(downscale clamped to >= 1), so a 128 px model sees the same *relative*
degradation as a 512 px one.

The single-degradation functions (``gaussian_blur``, ``motion_blur``,
``downscale``, ``gaussian_noise``, ``poisson_noise``, ``jpeg``, ``color_jitter``,
``grayscale``) take explicit severities (float or per-sample tensor) and are
public: the IQA tests use them for monotonicity checks. ``apply_severity`` maps
a 0..1 severity level onto each range.

The fixed benchmark (``python -m facerefine eval london-heldout``) uses three documented, seeded
severities instead of random ranges (``BENCHMARK_SEVERITIES``, ``degrade_fixed``), stated at 512 px:

- mild:   x2 down + JPEG 70
- medium: blur sigma 2 + x4 down + noise 5/255 + JPEG 50
- heavy:  blur sigma 4 + x8 down + noise 10/255 + JPEG 30

Blur at full size, bilinear antialiased down, Gaussian RGB noise and JPEG at the low resolution, bicubic
back up, quantised to 8 bits. Each face's noise is seeded by (seed, the face's own key), so a face's LQ
bytes never depend on the rest of the batch.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F

Severity = Union[float, torch.Tensor]

__all__ = [
    "DegradeConfig", "degrade", "apply_severity", "SEVERITY_KINDS",
    "gaussian_blur", "motion_blur", "downscale", "gaussian_noise", "poisson_noise",
    "jpeg", "color_jitter", "grayscale",
    "FixedDegradation", "BENCHMARK_SEVERITIES", "fixed_severity", "degrade_fixed",
]


def _per_sample(value: Severity, n: int, device) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float32, device=device).flatten()
    return t.expand(n).clone() if t.numel() == 1 else t


def _check(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N,3,H,W] in 0..1, got {tuple(x.shape)}")


# --------------------------------------------------------------------------- single degradations

def gaussian_blur(x: torch.Tensor, sigma: Severity) -> torch.Tensor:
    """Isotropic Gaussian blur; ``sigma`` in pixels (scalar or [N]). sigma <= 0 leaves a sample unchanged."""
    _check(x)
    from kornia.filters import gaussian_blur2d
    n = x.shape[0]
    s = _per_sample(sigma, n, x.device)
    out = x.clone()
    active = s > 1e-3
    if active.any():
        smax = float(s[active].max())
        k = min(2 * math.ceil(3 * smax) + 1, 2 * (min(x.shape[-2:]) // 2) - 1)
        k = max(k, 3)
        sig = s[active].unsqueeze(1).expand(-1, 2).to(x.dtype)
        out[active] = gaussian_blur2d(x[active], (k, k), sig, border_type="reflect")
    return out


def motion_blur(x: torch.Tensor, length: Severity, angle: Severity = 0.0) -> torch.Tensor:
    """Linear motion blur of ``length`` pixels at ``angle`` degrees (scalars or [N]). length < 2: unchanged."""
    _check(x)
    from kornia.filters import motion_blur as _motion
    n = x.shape[0]
    lengths = _per_sample(length, n, x.device)
    angles = _per_sample(angle, n, x.device)
    out = x.clone()
    # one odd kernel size per kornia call: group samples by rounded length
    sizes = (torch.round(lengths / 2) * 2 + 1).long()
    for size in sizes.unique().tolist():
        if size < 3:
            continue
        idx = (sizes == size).nonzero().flatten()
        out[idx] = _motion(x[idx], int(size), angles[idx], torch.zeros_like(angles[idx]), border_type="reflect")
    return out


def downscale(x: torch.Tensor, factor: Severity, mode: str = "bilinear") -> torch.Tensor:
    """Downscale by ``factor`` (>= 1; scalar or [N]) then bicubic back to the input size."""
    _check(x)
    n, _, h, w = x.shape
    factors = _per_sample(factor, n, x.device).clamp(min=1.0)
    out = x.clone()
    for f in factors.unique().tolist():
        if f <= 1.0 + 1e-6:
            continue
        idx = (factors == f).nonzero().flatten()
        small = (max(1, round(h / f)), max(1, round(w / f)))
        lo = F.interpolate(x[idx], size=small, mode=mode, align_corners=False, antialias=True)
        out[idx] = F.interpolate(lo, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
    return out


def gaussian_noise(x: torch.Tensor, sigma: Severity, generator: Optional[torch.Generator] = None,
                   gray: Severity = 0.0) -> torch.Tensor:
    """Additive Gaussian noise, ``sigma`` in 0..1 units (20/255 is strong). ``gray``=1: same noise in all channels."""
    _check(x)
    n = x.shape[0]
    s = _per_sample(sigma, n, x.device).view(n, 1, 1, 1)
    g = _per_sample(gray, n, x.device).view(n, 1, 1, 1) > 0.5
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    noise = torch.where(g, noise[:, :1].expand_as(noise), noise)
    return (x + noise * s).clamp(0, 1)


def poisson_noise(x: torch.Tensor, scale: Severity, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Shot noise as in Real-ESRGAN (Poisson counts of 8-bit levels), multiplied by ``scale`` (0 none, 3 strong)."""
    _check(x)
    n = x.shape[0]
    sc = _per_sample(scale, n, x.device).view(n, 1, 1, 1)
    # Real-ESRGAN style: photon count per unit intensity derived from 8-bit levels, noise scaled by `scale`.
    vals = 255.0
    counts = torch.poisson((x.clamp(0, 1) * vals).float(), generator=generator)
    noise = (counts / vals - x)
    return (x + noise * sc).clamp(0, 1)


def jpeg(x: torch.Tensor, quality: Severity) -> torch.Tensor:
    """Real JPEG round trip (libjpeg via torchvision) at ``quality`` 1..100 (scalar or [N]); 100+ leaves it unchanged."""
    _check(x)
    import warnings

    from torchvision.io import decode_jpeg, encode_jpeg
    n = x.shape[0]
    qs = _per_sample(quality, n, x.device).round().clamp(1, 101).long().tolist()
    out = x.clone()
    u8 = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    with warnings.catch_warnings():  # torchvision 0.29 announces a move to torchcodec; the codec still works
        warnings.simplefilter("ignore", DeprecationWarning)
        for i, q in enumerate(qs):
            if q > 100:
                continue
            img = u8[i]
            if img.shape[0] == 1:
                img = img.expand(3, -1, -1)
            dec = decode_jpeg(encode_jpeg(img.contiguous(), quality=int(q)))
            out[i] = (dec[: x.shape[1]].float() / 255).to(x.device, x.dtype)
    return out


def color_jitter(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Add a per-sample, per-channel offset ``shift`` [N,3] (GFPGAN uses +-0.05)."""
    _check(x)
    return (x + shift.to(x.device, x.dtype).view(x.shape[0], -1, 1, 1)).clamp(0, 1)


def grayscale(x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """ITU-R 601 luma replicated to 3 channels, for all samples or where ``mask`` [N] is true."""
    _check(x)
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    gray = (x * w).sum(1, keepdim=True).expand_as(x)
    if mask is None:
        return gray.clone()
    return torch.where(mask.to(x.device).view(-1, 1, 1, 1), gray, x)


# --------------------------------------------------------------------------- severity levels (for IQA tests)

# level 0..1 -> parameter (pixel sizes at the input's own size unless apply_severity gets reference_size)
SEVERITY_KINDS = {
    "blur": (0.0, 8.0),          # Gaussian sigma px
    "motion": (0.0, 31.0),       # motion length px
    "downscale": (1.0, 8.0),     # factor
    "noise": (0.0, 0.12),        # Gaussian sigma (0..1 units)
    "poisson": (0.0, 3.0),       # shot-noise scale
    "jpeg": (101.0, 10.0),       # quality (101 = no JPEG)
}


def apply_severity(x: torch.Tensor, kind: str, level: float, seed: int = 0,
                   reference_size: Optional[int] = None) -> torch.Tensor:
    """One degradation at ``level`` in 0..1 (0 = identity), for monotonicity tests. Deterministic in ``seed``.

    ``kind`` is one of SEVERITY_KINDS or "combined" (all of blur, downscale, noise, jpeg at the same level).
    Pixel sizes (blur sigma, motion length, downscale factor) apply to ``x`` as given; pass
    ``reference_size`` (e.g. 512) to scale them by ``x.shape[-1] / reference_size`` like DegradeConfig.
    """
    if kind == "combined":
        for k in ("blur", "downscale", "noise", "jpeg"):
            x = apply_severity(x, k, level, seed, reference_size)
        return x
    if kind not in SEVERITY_KINDS:
        raise ValueError(f"unknown degradation {kind!r}; choose from {sorted(SEVERITY_KINDS) + ['combined']}")
    lo, hi = SEVERITY_KINDS[kind]
    value = lo + (hi - lo) * float(min(max(level, 0.0), 1.0))
    scale = x.shape[-1] / reference_size if reference_size else 1.0
    gen = torch.Generator(device="cpu").manual_seed(seed)
    if kind == "blur":
        return gaussian_blur(x, value * scale)
    if kind == "motion":
        return motion_blur(x, value * scale, 45.0)
    if kind == "downscale":
        return downscale(x, max(1.0, value * scale))
    if kind == "noise":
        return _on(x, lambda y: gaussian_noise(y, value, gen))
    if kind == "poisson":
        return _on(x, lambda y: poisson_noise(y, value, gen))
    return jpeg(x, value)


def _on(x: torch.Tensor, fn):
    """Run a noise function on CPU (generator lives there) and come back."""
    return fn(x.cpu()).to(x.device) if x.device.type != "cpu" else fn(x)


# --------------------------------------------------------------------------- the random pipeline

@dataclass(frozen=True)
class DegradeConfig:
    """Ranges of the random pipeline, stated at ``reference_size`` px (see module docstring)."""

    blur_sigma: tuple[float, float] = (0.1, 10.0)
    motion_prob: float = 0.1
    motion_length: tuple[float, float] = (3.0, 41.0)
    downscale: tuple[float, float] = (1.0, 8.0)
    noise_sigma: tuple[float, float] = (0.0, 20.0 / 255.0)
    poisson_prob: float = 0.2
    poisson_scale: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.2
    jpeg_quality: tuple[float, float] = (60.0, 100.0)
    color_jitter_prob: float = 0.0
    color_jitter_shift: float = 0.05
    gray_prob: float = 0.0
    reference_size: int = 512

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "DegradeConfig":
        d = dict(d or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown degradation settings {sorted(unknown)}; known: {sorted(names)}")
        for k, v in d.items():
            if isinstance(v, list):
                d[k] = tuple(v)
        return cls(**d)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def sample_params(n: int, size: int, config: DegradeConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Draw per-sample degradation parameters (on CPU) for ``n`` faces of ``size`` px."""
    c, g = config, generator
    scale = size / c.reference_size
    params = {
        "motion": torch.rand(n, generator=g) < c.motion_prob,
        "blur_sigma": _uniform(g, n, *c.blur_sigma) * scale,
        "motion_length": _uniform(g, n, *c.motion_length) * scale,
        "motion_angle": _uniform(g, n, 0.0, 360.0),
        "downscale": (_uniform(g, n, *c.downscale) * scale).clamp(min=1.0),
        "poisson": torch.rand(n, generator=g) < c.poisson_prob,
        "noise_sigma": _uniform(g, n, *c.noise_sigma),
        "noise_gray": (torch.rand(n, generator=g) < c.gray_noise_prob).float(),
        "poisson_scale": _uniform(g, n, *c.poisson_scale),
        "jpeg_quality": _uniform(g, n, *c.jpeg_quality).round(),
        "jitter": torch.rand(n, generator=g) < c.color_jitter_prob,
        "jitter_shift": _uniform(g, 3 * n, -c.color_jitter_shift, c.color_jitter_shift).view(n, 3),
        "gray": torch.rand(n, generator=g) < c.gray_prob,
    }
    # round the downscale factor so batches share few interpolation sizes
    params["downscale"] = (params["downscale"] * 4).round() / 4
    return params


def degrade(hq: torch.Tensor, config: Optional[DegradeConfig] = None, seed: Optional[int] = None,
            generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Synthetic LQ for a batch of HQ faces [N,3,S,S] 0..1. Returns (lq, per-sample parameters).

    Pass ``seed`` (fresh generator) or a ``generator`` to continue a stream; random draws happen on CPU so
    the result does not depend on the device. The HQ target always stays colour (with ``gray_prob`` > 0
    the model learns colourisation, as in GFPGAN).
    """
    _check(hq)
    config = config or DegradeConfig()
    if generator is None:
        generator = torch.Generator(device="cpu").manual_seed(0 if seed is None else int(seed))
    n, size = hq.shape[0], hq.shape[-1]
    p = sample_params(n, size, config, generator)
    x = hq.float().clamp(0, 1)
    sigma = torch.where(p["motion"], torch.zeros(n), p["blur_sigma"])
    x = gaussian_blur(x, sigma.to(x.device))
    length = torch.where(p["motion"], p["motion_length"], torch.zeros(n))
    x = motion_blur(x, length.to(x.device), p["motion_angle"].to(x.device))
    x = downscale(x, p["downscale"].to(x.device))
    noise_gen_state = torch.randn(1, generator=generator)  # advance the stream deterministically
    noise_gen = torch.Generator(device="cpu").manual_seed(int(noise_gen_state.abs().item() * 1e6))
    xc = x.cpu()
    gauss = gaussian_noise(xc, torch.where(p["poisson"], torch.zeros(n), p["noise_sigma"]), noise_gen,
                           gray=p["noise_gray"])
    poiss = poisson_noise(xc, torch.where(p["poisson"], p["poisson_scale"], torch.zeros(n)), noise_gen)
    x = torch.where(p["poisson"].view(n, 1, 1, 1), poiss, gauss).to(hq.device)
    x = jpeg(x, p["jpeg_quality"])
    if p["jitter"].any():
        x = color_jitter(x, p["jitter_shift"] * p["jitter"].float().unsqueeze(1))
    if p["gray"].any():
        x = grayscale(x, p["gray"])
    return x.clamp(0, 1).to(hq.dtype), p


# --------------------------------------------------------------------------- fixed benchmark severities

@dataclass(frozen=True)
class FixedDegradation:
    """One documented, seeded degradation for the ``eval london-heldout`` benchmark.

    Stated at ``reference_size`` px (512: the benchmark's crop size); pixel sizes scale with the face size.
    Order, as in the GFPGAN/CodeFormer model with the noise and JPEG applied at the low resolution:

        blur sigma (full size) -> bilinear antialiased down by ``downscale`` -> Gaussian RGB noise ->
        JPEG at ``jpeg_quality`` -> bicubic back up to the full size
    """

    name: str
    blur_sigma: float       # Gaussian blur sigma in px at reference_size (0 = none)
    downscale: float        # down factor (1 = none)
    noise_sigma: float      # Gaussian noise sigma in 0..1 units (5/255 ...), per RGB channel
    jpeg_quality: int       # 1..100; > 100 = no JPEG
    reference_size: int = 512

    def describe(self) -> str:
        parts = []
        if self.blur_sigma > 0:
            parts.append(f"blur sigma {self.blur_sigma:g}")
        if self.downscale > 1:
            parts.append(f"x{self.downscale:g} down")
        if self.noise_sigma > 0:
            parts.append(f"noise {self.noise_sigma * 255:g}/255")
        if self.jpeg_quality <= 100:
            parts.append(f"JPEG {self.jpeg_quality}")
        return " + ".join(parts or ["none"]) + f", at {self.reference_size} px, bicubic back up"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The three severities of ``python -m facerefine eval london-heldout`` (issue 14). Changing them changes
# every published benchmark number: add a new name instead.
BENCHMARK_SEVERITIES = {
    "mild": FixedDegradation("mild", blur_sigma=0.0, downscale=2.0, noise_sigma=0.0, jpeg_quality=70),
    "medium": FixedDegradation("medium", blur_sigma=2.0, downscale=4.0, noise_sigma=5 / 255, jpeg_quality=50),
    "heavy": FixedDegradation("heavy", blur_sigma=4.0, downscale=8.0, noise_sigma=10 / 255, jpeg_quality=30),
}


def fixed_severity(name: Union[str, FixedDegradation]) -> FixedDegradation:
    if isinstance(name, FixedDegradation):
        return name
    try:
        return BENCHMARK_SEVERITIES[str(name).strip().lower()]
    except KeyError:
        raise ValueError(f"unknown severity {name!r}; choose from {', '.join(BENCHMARK_SEVERITIES)}") from None


def face_seed(seed: int, key: int) -> int:
    """The noise seed of one face: depends only on the run seed and the face's own key (not its batch)."""
    return (int(seed) * 1_000_003 + int(key) * 7_919 + 12_345) % (2 ** 63 - 1)


def degrade_fixed(hq: torch.Tensor, severity: Union[str, FixedDegradation], seed: int = 0,
                  keys: Optional[list] = None) -> torch.Tensor:
    """LQ faces for a batch of HQ faces [N,3,S,S] 0..1 with one fixed severity (see BENCHMARK_SEVERITIES).

    Deterministic: the same (seed, key) gives the same LQ bytes for a face whatever else is in the batch.
    ``keys`` (one int per face, e.g. a CRC of its file name) default to the batch positions.
    """
    _check(hq)
    d = fixed_severity(severity)
    n, _, h, w = hq.shape
    keys = list(range(n)) if keys is None else [int(k) for k in keys]
    if len(keys) != n:
        raise ValueError(f"{n} faces but {len(keys)} keys")
    scale = w / d.reference_size
    x = hq.float().clamp(0, 1)
    if d.blur_sigma > 0:
        x = gaussian_blur(x, d.blur_sigma * scale)
    small = (max(1, round(h / d.downscale)), max(1, round(w / d.downscale)))
    if small != (h, w):
        x = F.interpolate(x, size=small, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    if d.noise_sigma > 0:
        xc = x.cpu()
        noisy = [gaussian_noise(xc[i:i + 1], d.noise_sigma,
                                torch.Generator(device="cpu").manual_seed(face_seed(seed, k)))
                 for i, k in enumerate(keys)]
        x = torch.cat(noisy).to(hq.device)
    x = jpeg(x, d.jpeg_quality)
    if small != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)
    return (x.clamp(0, 1) * 255).round().div(255).to(hq.dtype)  # an 8-bit image, like a real LQ photo
