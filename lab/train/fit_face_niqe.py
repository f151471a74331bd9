"""Fit the face-niqe pristine model on the London set (neutral, training identities only).

    python -m facerefine.lab.train.fit_face_niqe [--data ../shared/data/london] [--out weights/face_niqe.safetensors]

Crops: core/crop (face detection + alignment) needs detector weights that are not
available offline, so the model is fitted on a fixed central 512x512 crop
(pixels 128..640 of the 768x768 studio portrait, no resampling). In that crop the
face sits where an FFHQ-aligned 512 crop puts it (eyes at ~44% height), so the
statistics transfer to aligned crops. Every block of every crop is used.

The fit is deterministic: sorted file list, fixed batch order, float64 statistics.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..datasets import london_split
from ...core.score.face_niqe import FaceNiqeConfig, fit_mvg, nss_features

LONDON_CROP_BOX = (128, 128, 640, 640)   # x0, y0, x1, y1 in the 768x768 image
DEFAULT_CONFIG = FaceNiqeConfig(work_size=512, block_size=32, scales=3)
NORM_RANGE = (0.0, 20.0)                 # raw face-niqe mapped to normalised 1..0
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "weights" / "face_niqe.safetensors"


def load_london_crop(path: str | Path, size: Optional[int] = None) -> torch.Tensor:
    """[3,S,S] RGB 0..1 central face crop of a London-set portrait."""
    from PIL import Image
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (768, 768):
            im = im.resize((768, 768), Image.BICUBIC)
        im = im.crop(LONDON_CROP_BOX)
        if size and size != im.size[0]:
            im = im.resize((size, size), Image.BICUBIC)
        arr = np.asarray(im).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0


def collect_features(paths: Sequence[Path], cfg: FaceNiqeConfig, batch: int = 8,
                     log=None) -> list[torch.Tensor]:
    feats = []
    with torch.inference_mode():
        for i in range(0, len(paths), batch):
            x = torch.stack([load_london_crop(p) for p in paths[i:i + batch]])
            f, _ = nss_features(x, cfg)
            feats.extend(f.unbind(0))
            if log:
                log(f"  features {min(i + batch, len(paths))}/{len(paths)}")
    return feats


def fit(paths: Sequence[Path], cfg: FaceNiqeConfig = DEFAULT_CONFIG, log=None) -> dict[str, torch.Tensor]:
    """State dict of a face-niqe model fitted on ``paths``."""
    if not paths:
        raise ValueError("no training images")
    feats = collect_features(paths, cfg, log=log)
    mu, cov = fit_mvg(feats)
    sd = {"mu": mu, "cov": cov, "norm_range": torch.tensor(NORM_RANGE, dtype=torch.float64),
          "num_images": torch.tensor(len(paths), dtype=torch.int64)}
    # per-image first/second moments: lets a quick test re-derive a few images' features and
    # check that they aggregate to mu and diag(cov) without refitting everything
    sd["per_image_mean"] = torch.stack([f.double().mean(0) for f in feats])
    sd["per_image_sqmean"] = torch.stack([f.double().pow(2).mean(0) for f in feats])
    sd["blocks_per_image"] = torch.tensor([f.shape[0] for f in feats], dtype=torch.int64)
    sd.update(cfg.to_tensor_dict())
    return sd


def aggregate_moments(sd: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """mu and diag(cov) re-derived from the stored per-image moments."""
    n = sd["blocks_per_image"].double().unsqueeze(1)
    total = n.sum()
    mu = (sd["per_image_mean"] * n).sum(0) / total
    second = (sd["per_image_sqmean"] * n).sum(0)
    var = (second - total * mu * mu) / (total - 1)
    return mu, var


def compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    """Largest relative differences of the fitted parameters."""
    out = {}
    for key in ("mu", "cov"):
        scale = b[key].abs().max().clamp_min(1e-12)
        out[key] = float((a[key].double() - b[key].double()).abs().max() / scale)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="London set folder (default ../shared/data/london)")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--limit", type=int, default=0, help="fit on the first N training images only")
    parser.add_argument("--check", action="store_true",
                        help="do not write; compare a fresh fit with the file at --out")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    split = london_split(args.data)
    paths = split["train_neutral"][: args.limit or None]
    if not paths:
        print("error: no London training images found", file=sys.stderr)
        return 1
    t0 = time.time()
    sd = fit(paths, log=lambda m: print(m, file=sys.stderr))
    report = {"images": len(paths), "seconds": round(time.time() - t0, 1),
              "identities_heldout": len(split["heldout_neutral"])}
    if args.check:
        from ...models.loading import load_state_dict
        shipped = load_state_dict(args.out, unwrap=False)
        report["max_rel_diff"] = compare(sd, shipped)
    else:
        from ...models.loading import save_safetensors
        save_safetensors(sd, args.out, metadata={"fitted_on": "London set neutral, training identities",
                                                 "train_files": ",".join(p.name for p in paths),
                                                 "crop": f"central {LONDON_CROP_BOX}",
                                                 "license": "CC BY 4.0 data (DeBruine & Jones 2017)"})
        report["out"] = args.out
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
