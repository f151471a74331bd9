"""Does a metric follow face quality? Synthetic degradations of rising severity.

    python -m facerefine.lab.sensitivity [--metrics face-niqe,piqe] [--faces 20] [--json]

On held-out London identities (never used for fitting), each face crop is degraded
at five severity levels per kind; a metric passes when the mean normalised score falls
with severity (Spearman rho <= -0.9, i.e. rho >= 0.9 against "quality goes down") and
the clean originals score above every degraded level.

Severities (512 px face crops):
  blur       Gaussian sigma 0.7, 1.2, 2, 3, 4.5 px
  downscale  factor 1.5, 2, 3, 4, 6 (area-antialiased down, bicubic up)
  noise      Gaussian sigma 0.03, 0.05, 0.07, 0.10, 0.14 (0..1 scale)
  jpeg       quality 70, 50, 30, 18, 10
  combined   blur -> downscale -> noise (half the noise-only sigma) -> JPEG, all at the same level
             (the GFPGAN/CodeFormer degradation order)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Optional, Sequence

import torch

LEVELS: dict[str, tuple[float, ...]] = {
    "blur": (0.7, 1.2, 2.0, 3.0, 4.5),
    "downscale": (1.5, 2.0, 3.0, 4.0, 6.0),
    "noise": (0.03, 0.05, 0.07, 0.10, 0.14),
    "jpeg": (70, 50, 30, 18, 10),
}
COMBINED_NOISE_FACTOR = 0.5
KINDS = tuple(LEVELS) + ("combined",)


def degrade_level(x: torch.Tensor, kind: str, level: int, seed: int = 0) -> torch.Tensor:
    """x [N,3,H,W] 0..1 at severity ``level`` (1..5; 0 = unchanged). Sizes are for 512 px crops."""
    from . import degrade as D
    if level == 0:
        return x.clone()
    if kind not in KINDS or not 1 <= level <= 5:
        raise ValueError(f"kind must be one of {KINDS} and level 0..5")
    scale = x.shape[-1] / 512.0
    i = level - 1

    def step(img: torch.Tensor, k: str, noise_factor: float = 1.0) -> torch.Tensor:
        v = LEVELS[k][i]
        if k == "blur":
            return D.gaussian_blur(img, v * scale)
        if k == "downscale":
            return D.downscale(img, v)
        if k == "noise":
            return D.gaussian_noise(img, v * noise_factor, generator=torch.Generator().manual_seed(seed))
        return D.jpeg(img, v)

    if kind == "combined":
        for k in ("blur", "downscale"):
            x = step(x, k)
        x = step(x, "noise", COMBINED_NOISE_FACTOR)
        return step(x, "jpeg").clamp(0, 1)
    return step(x, kind).clamp(0, 1)


def spearman(values: Sequence[float]) -> float:
    """Spearman rho of values against 1..n (average ranks for ties)."""
    from scipy.stats import spearmanr
    rho = spearmanr(list(range(len(values))), list(values)).correlation
    return float("nan") if rho is None else float(rho)


def degraded_sets(faces: torch.Tensor, kinds: Sequence[str] = KINDS,
                  levels: Sequence[int] = (1, 2, 3, 4, 5)) -> dict[tuple[str, int], torch.Tensor]:
    """Every (kind, level) degradation of ``faces``, computed once so several metrics can share them."""
    return {(k, lv): degrade_level(faces, k, lv) for k in kinds for lv in levels}


def evaluate(metric, faces: torch.Tensor, kinds: Sequence[str] = KINDS, levels: Sequence[int] = (1, 2, 3, 4, 5),
             log=None, sets: Optional[dict] = None) -> dict:
    """Mean normalised scores per kind and level, Spearman rho and the pass flags."""
    clean = metric.normalized(faces)
    out = {"metric": metric.name, "faces": int(faces.shape[0]), "clean_mean": float(clean.mean()), "kinds": {}}
    passed = True
    for kind in kinds:
        means = []
        frac_below_clean = []
        for level in levels:
            degraded = sets[(kind, level)] if sets is not None else degrade_level(faces, kind, level)
            s = metric.normalized(degraded)
            means.append(float(s.mean()))
            frac_below_clean.append(float((s < clean).float().mean()))
        rho = spearman(means)
        ok = rho <= -0.9 and max(means) < out["clean_mean"]
        passed &= ok
        out["kinds"][kind] = {"means": [round(m, 4) for m in means], "rho_vs_severity": round(-rho, 4),
                              "clean_above_all": max(means) < out["clean_mean"],
                              "fraction_of_faces_below_their_clean": [round(f, 3) for f in frac_below_clean],
                              "pass": ok}
        if log:
            log(f"{metric.name} {kind}: " + ", ".join(f"{m:.3f}" for m in means) + f"  rho={-rho:.3f}")
    out["pass"] = passed
    return out


def heldout_faces(count: int, size: int = 512, root=None) -> torch.Tensor:
    from .datasets import london_split
    from .train.fit_face_niqe import load_london_crop
    paths = london_split(root)["heldout_neutral"][:count]
    if not paths:
        raise FileNotFoundError("no held-out London faces found")
    return torch.stack([load_london_crop(p, size) for p in paths])


def main(argv: Optional[list[str]] = None) -> int:
    from ..core.score import get_metric
    parser = argparse.ArgumentParser(description="metric sensitivity on held-out London faces")
    parser.add_argument("--metrics", default="face-niqe,piqe")
    parser.add_argument("--faces", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    faces = heldout_faces(args.faces, args.size)
    results = []
    for name in args.metrics.split(","):
        t0 = time.time()
        r = evaluate(get_metric(name, args.device), faces, log=lambda m: print(m, file=sys.stderr))
        r["seconds"] = round(time.time() - t0, 1)
        print(f"{name}: clean {r['clean_mean']:.3f}  pass={r['pass']}", file=sys.stderr)
        results.append(r)
    if args.json:
        print(json.dumps({"results": results}))
    return 0 if all(r["pass"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
