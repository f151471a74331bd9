"""Tune the benchmark's classical baseline once, on TRAINING London identities (never the held-out ones).

    python -m facerefine.lab.eval.tune_classical [--faces 12] [--seed 0] [--out lab/eval/classical_params.json]

For each benchmark severity (``degrade.BENCHMARK_SEVERITIES``) a small grid of OpenCV denoisers (none,
NL-means, bilateral) x unsharp masks is scored by mean PSNR to the HQ crop over the first ``--faces``
training photos (identities in sorted order, neutral + smiling, aligned by the crop step like the benchmark),
and the best setting is written, with the grid, the faces and every score, to ``classical_params.json``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

from .classical import PARAMS_FILE, ClassicalParams, denoise_u8, unsharp_u8

DENOISE_GRID = [("none", 0.0)] + [("nlmeans", h) for h in (3.0, 5.0, 8.0, 12.0)] + \
               [("bilateral", s) for s in (15.0, 30.0)]
SHARPEN_GRID = [(1.0, 0.0)] + [(sigma, amount) for sigma, amount in itertools.product((1.0, 2.0), (0.5, 1.0))]


def training_photos(n: int, root=None) -> list[Path]:
    from .. import datasets
    split = datasets.london_split(root)
    by_id: dict[str, list[Path]] = {}
    for key in ("train_neutral", "train_smiling"):
        for p in split[key]:
            by_id.setdefault(datasets.london_identity(p), []).append(p)
    heldout = set(datasets.heldout_identities(root))
    photos = [p for ident in sorted(by_id) if ident not in heldout for p in by_id[ident]]
    return photos[:n]


def tune(n_faces: int = 12, seed: int = 0, severities=None, detector: str = "mtcnn", size: int = 512,
         log=print, out: Path | None = None) -> dict:
    """Grid search per severity; with ``out`` the record is merged into that file after each severity
    (a long run can be stopped and continued with ``--severities``)."""
    import numpy as np
    import torch

    from ..degrade import BENCHMARK_SEVERITIES
    from .face_metrics import to_u8
    from .harness import psnr, ssim
    from .heldout import align_photos, lq_faces
    severities = list(severities or BENCHMARK_SEVERITIES)
    photos = training_photos(n_faces)
    if not photos:
        raise SystemExit("no training London photos found (../shared/data/london)")
    hq, _, photos = align_photos(photos, size, detector)
    scale = size / 512
    record = {"objective": "mean PSNR (RGB, whole crop) to the HQ crop", "seed": seed, "detector": detector,
              "size": size, "faces": [p.name for p in photos],
              "grid": {"denoise": DENOISE_GRID, "sharpen (sigma, amount)": SHARPEN_GRID},
              "command": "python -m facerefine.lab.eval.tune_classical " + " ".join(sys.argv[1:]),
              "severities": {}}
    if out is not None and Path(out).is_file():
        old = json.loads(Path(out).read_text())
        same = {k: old.get(k) for k in ("seed", "detector", "size", "faces")} == \
               {k: record[k] for k in ("seed", "detector", "size", "faces")}
        if same:  # keep the severities tuned before on the same faces
            record["severities"] = {k: v for k, v in old.get("severities", {}).items() if k not in severities}
    for sev in severities:
        t0 = time.perf_counter()
        lq = lq_faces(hq, sev, seed, photos)
        lq_u8 = to_u8(lq)
        lq_psnr = float(psnr(lq, hq).mean())
        scores = []
        for den, strength in DENOISE_GRID:
            base = ClassicalParams(den, strength, 1.0, 0.0)
            denoised = [denoise_u8(img, base, scale) for img in lq_u8]
            for sigma, amount in SHARPEN_GRID:
                p = ClassicalParams(den, strength, sigma, amount)
                sharpened = np.stack([unsharp_u8(img, p, scale) for img in denoised])
                x = torch.from_numpy(sharpened).permute(0, 3, 1, 2).float() / 255
                scores.append((float(psnr(x, hq).mean()), float(ssim(x, hq).mean()), p))
        best = max(scores, key=lambda s: s[0])
        record["severities"][sev] = {
            "params": best[2].to_dict(), "description": best[2].describe(), "psnr": best[0], "ssim": best[1],
            "lq_psnr": lq_psnr, "lq_ssim": float(ssim(lq, hq).mean()),
            "all": [{"params": p.to_dict(), "psnr": a, "ssim": b} for a, b, p in scores]}
        log(f"{sev}: LQ {lq_psnr:.2f} dB -> best {best[0]:.2f} dB / SSIM {best[1]:.4f} with {best[2].describe()} "
            f"({time.perf_counter() - t0:.0f} s)")
        if out is not None:
            order = [k for k in BENCHMARK_SEVERITIES if k in record["severities"]]
            record["severities"] = {k: record["severities"][k] for k in order}
            Path(out).write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=12, help="training photos to tune on (identities in order)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--detector", default="mtcnn")
    ap.add_argument("--severities", default=None, help="comma-separated (default: all benchmark severities)")
    ap.add_argument("--out", default=str(PARAMS_FILE))
    args = ap.parse_args(argv)
    sevs = [s.strip() for s in args.severities.split(",") if s.strip()] if args.severities else None
    tune(args.faces, args.seed, severities=sevs, detector=args.detector, out=Path(args.out),
         log=lambda m: print(m, flush=True))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
