"""Fit the face-iqa critic (core/score/face_iqa.py) on the London set's training identities only.

    python -m facerefine.lab.train.fit_face_iqa [--faces 0] [--per-kind 4] [--mild-weight 8] [--texture-weight 4]
                                                [--cache FEATS.pt] [--out weights/face_iqa.safetensors]

For every training identity (``lab.datasets.london_split()['train_neutral']``; the held-out fifth is
never touched) the aligned 512² crop is degraded with random continuous severities of every bench
distortion (lab/critic_bench.py: blur, downscale, noise, JPEG, mosaic, over-smoothing, colour blotches,
ringing, ghosting, GAN texture and two combinations), with seeds disjoint from the bench's. Issue 25 adds, per
face, blurry LQs (blur sigma 3.5..6, x5..x9 down, the medium and heavy presets of lab/degrade.py), each with its
8-px mosaic, itself plus GAN texture at a mild and a strong amount, and a 128² copy with its mosaic (6..12 px
blocks of the copy); GAN texture on two classic LQs and a 128² copy + mosaic of the clean face and one classic LQ.
From the features we fit, deterministically (full-batch L-BFGS, fixed seeds):

* the clean-face mean and std of each feature (standardisation);
* linear weights on [z, |z|, relu(z)², relu(-z)²] by a smooth-hinge ranking loss over pairs of the same
  identity: clean > degraded; milder > stronger of the same kind; NL-means+unsharp output > its LQ;
  an LQ (or a 128² copy) > its mosaic; an LQ > itself plus GAN texture; real restoration outcomes in face-SSIM
  order (``restored_samples``).

The score is then scaled so the median clean training face gives 9 and the median of the strongest
third of the degradations (``CALIBRATION_KINDS``) gives 2 (normalised = raw / 10, clipped).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ...core.score.face_iqa import FEATURES, expand, features
from .. import artifacts as A
from .. import critic_bench as B
from ..datasets import london_split

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "weights" / "face_iqa.safetensors"
SEED_OFFSET = 100_000           # training seeds never coincide with the bench's (0..)
TEXTURE_WEIGHT = 4.0            # weight of the LQ > LQ + GAN texture pairs (--texture-weight)


def _range(kind: str) -> tuple[float, float]:
    lv = B.LEVELS[kind]
    if kind in ("classic", "artefacts"):
        return 0.0, 1.1             # position in the level range
    lo, hi = float(lv[0]), float(lv[-1])
    if kind == "jpeg":
        return 90.0, 8.0
    if kind == "mosaic":
        return 2.0, 16.0
    if kind == "downscale":
        return 1.25, hi * 1.15      # a factor below ~1.2 is no damage at all
    return lo * 0.6, hi * 1.15


# blurry LQ sources of the mosaic and texture pairs (the bench's BLURRY_LQ, at other settings and seeds):
# Gaussian blur sigma and downscale factor ranges at 512², and lab.degrade benchmark presets
BLURRY_BLUR = (3.5, 6.0)
BLURRY_DOWN = (5.0, 9.0)
BLURRY_PRESETS = ("medium", "heavy")


def blurry_samples(face: torch.Tensor, regions: dict, rng: np.random.Generator, seed: int,
                   start: int) -> list[tuple[str, float, torch.Tensor, Optional[int]]]:
    """Blurry LQs of one face (kind "blurry_lq"), each followed by its 8-px mosaic ("mosaic8") and by itself plus
    GAN texture at a mild and a strong random amount ("lq_texture"); the source index counts from ``start``."""
    from ..degrade import degrade_fixed
    lqs = [B.distort(face, regions, "blur", 1, value=float(rng.uniform(*BLURRY_BLUR))),
           B.distort(face, regions, "downscale", 1, value=float(rng.uniform(*BLURRY_DOWN)))]
    lqs += [degrade_fixed(face, p, seed=seed + k, keys=[0]) for k, p in enumerate(BLURRY_PRESETS)]
    out: list = []
    for lq in lqs:
        src = start + len(out)
        out.append(("blurry_lq", 1.0, lq, None))
        out.append(("mosaic8", 1.0, A.mosaic(lq, 8), src))
        out += texture_samples(lq, rng, seed + 100 + len(out), src)
        out += small_mosaic_samples(lq, rng, start + len(out))
    return out


def small_mosaic_samples(img: torch.Tensor, rng: np.random.Generator,
                         start: int) -> list[tuple[str, float, torch.Tensor, Optional[int]]]:
    """A 128² copy of ``img`` ("small_copy") and its mosaic of 6..12 px blocks of the copy ("mosaic8"), both
    brought back to 512² as ``features`` would (the bench's mosaic check on small faces)."""
    import torch.nn.functional as F

    def up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=img.shape[-2:], mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    copy = B.small_copy(img, B.SMALL)
    block = int(rng.integers(6, 13))
    return [("small_copy", 1.0, up(copy), None), ("mosaic8", 1.0, up(A.mosaic(copy, block)), start)]


def texture_samples(src_img: torch.Tensor, rng: np.random.Generator, seed: int,
                    src: int) -> list[tuple[str, float, torch.Tensor, Optional[int]]]:
    """``src_img`` plus GAN texture at a mild (lower half of the range) and a strong amount ("lq_texture")."""
    lo, hi = _range("gan_texture")
    out = []
    for k, t in enumerate((rng.uniform(0.0, 0.5), rng.uniform(0.5, 1.0))):
        amount = lo + (hi - lo) * float(t)
        out.append(("lq_texture", float(t), A.gan_texture(src_img, amount, seed=seed + k), src))
    return out


def samples_for(face: torch.Tensor, regions: dict, rng: np.random.Generator, seed: int,
                per_kind: int) -> list[tuple[str, float, torch.Tensor, Optional[int]]]:
    """(kind, severity 0..1, image, index of the source it was made from) for one face [1,3,S,S]."""
    out = [("clean", 0.0, face, None)]
    for kind in B.KINDS:
        lo, hi = _range(kind)
        # stratified severities: every face gets a mild, a middle and a strong version of each kind, so the
        # orderings near the clean face (the hardest ones) are always in the fit
        for t in (np.arange(per_kind) + rng.uniform(0, 1, per_kind)) / per_kind:
            v = lo + (hi - lo) * t
            if kind == "mosaic":
                v = round(v)
            img = B.distort(face, regions, kind, 1, seed=seed + len(out), value=v)
            out.append((kind, float(t), img, None))
    lqs = [i for i, (k, _, _, _) in enumerate(out) if k in ("classic", "noise")]
    for i in lqs:
        out.append(("baseline", 0.0, A.nlm_unsharp(out[i][2]), i))
    classic = [i for i, (k, _, _, _) in enumerate(out) if k == "classic"][:2]
    for i in classic + [0]:
        out.append(("mosaic8", 1.0, A.mosaic(out[i][2], 8), i))
    for i in classic:
        out += texture_samples(out[i][2], rng, seed + 500 + len(out), i)
    for i in classic[:1] + [0]:
        out += small_mosaic_samples(out[i][2], rng, len(out))
    out += blurry_samples(face, regions, rng, seed + 700, len(out))
    return out


RESTORED_SEVERITIES = ("mild", "medium", "heavy")     # lab.degrade benchmark presets (degrade at low resolution)
SSIM_GAP = 0.01                                        # restored pairs are ordered only past this SSIM gap


def restored_samples(face: torch.Tensor, regions: dict, fi: int, restorer, classical: dict) -> list[dict]:
    """Real restoration outcomes for one training face: for each benchmark severity, the LQ (degraded at low
    resolution, then upscaled: blocks and noise are blown up, unlike the in-place bench kinds), the classical
    NL-means + unsharp result, and the embedded default restorer at quality 1 and 0. Each gets its face-region
    SSIM to the clean face, which orders them (a full-reference truth, not an opinion)."""
    from kornia.metrics import ssim as kssim

    from ...core.lookup.lookup import lookup
    from ...core.lookup.options import LookupOptions
    from ...core.types import FaceCrops, FaceInfo
    from ..degrade import degrade_fixed
    from ..eval.classical import classical_restore
    eye = np.eye(2, 3)
    info = [FaceInfo(affine=eye, inverse_affine=eye, landmarks=np.zeros((5, 2)), bbox=(0.0, 0.0, 512.0, 512.0),
                     score=1.0, image_index=0, image_size=(512, 512))]
    mask = regions["face"]
    out = []
    for sev in RESTORED_SEVERITIES:
        lq = degrade_fixed(face, sev, seed=SEED_OFFSET, keys=[fi])
        crops = FaceCrops(crops=lq, faces=info, crop_size=512)
        cands = {"lq": lq, "classical": classical_restore(lq, classical[sev])}
        for q in (1.0, 0.0):
            restored = lookup(crops, restorer, LookupOptions(quality=q, fidelity=0.5))[0]
            cands[f"v2_q{q:g}"] = restored.crops.float().clamp(0, 1)
        for name, img in cands.items():
            img = (img * 255).round() / 255
            smap = kssim(img, face, 11).mean(1, keepdim=True)
            out.append({"kind": f"restored:{name}", "severity": sev, "image": img,
                        "ssim": float((smap * mask).sum() / mask.sum())})
    return out


def restored_pairs(meta: list[dict]) -> list[tuple[int, int]]:
    """Within one (face, severity): the candidate with the clearly higher face SSIM is the better one."""
    groups: dict = {}
    for i, m in enumerate(meta):
        if str(m["kind"]).startswith("restored:"):
            groups.setdefault((m["face"], m["severity"]), []).append(i)
    pairs = []
    for idx in groups.values():
        for i in idx:
            for j in idx:
                if meta[i]["ssim"] > meta[j]["ssim"] + SSIM_GAP:
                    pairs.append((i, j))
    return pairs


def make_pairs(meta: list[dict]) -> list[tuple[int, int]]:
    """(better, worse) index pairs within each identity."""
    pairs = []
    by_face: dict[int, list[int]] = {}
    for i, m in enumerate(meta):
        by_face.setdefault(m["face"], []).append(i)
    for idx in by_face.values():
        clean = [i for i in idx if meta[i]["kind"] == "clean"][0]
        for i in idx:
            m = meta[i]
            if m["kind"] != "clean" and m["kind"] != "baseline":
                pairs.append((clean, i))
            if m["source"] is not None:
                src = idx[0] + m["source"]
                pairs.append((i, src) if m["kind"] == "baseline" else (src, i))
        for i in idx:
            for j in idx:
                mi, mj = meta[i], meta[j]
                if mi["kind"] == mj["kind"] and mi["kind"] in B.KINDS and mi["t"] + 0.08 < mj["t"]:
                    pairs.append((i, j))
    return pairs


def pair_weights(meta: list[dict], pairs: list[tuple[int, int]], per_kind: int, mild_weight: float,
                 texture_weight: float = 1.0) -> torch.Tensor:
    """``mild_weight`` for clean > its mildest version of a kind (the orderings that fail first on new faces);
    ``texture_weight`` for an LQ > itself plus GAN texture (what a detail-seeking model could exploit)."""
    def weight(a: int, b: int) -> float:
        if meta[a]["kind"] == "clean" and meta[b]["kind"] in B.KINDS and meta[b]["t"] < 1.0 / per_kind:
            return mild_weight
        if meta[b]["kind"] == "lq_texture" and meta[a]["kind"] != "clean":
            return texture_weight
        return 1.0
    return torch.tensor([weight(a, b) for a, b in pairs], dtype=torch.float64)


def fit_weights(z: torch.Tensor, pairs: list[tuple[int, int]], l2: float = 1e-3, steps: int = 300,
                weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    phi = expand(z.double())
    a = torch.tensor([p[0] for p in pairs])
    b = torch.tensor([p[1] for p in pairs])
    diff = phi[a] - phi[b]
    wp = torch.ones(len(pairs), dtype=torch.float64) if weights is None else weights
    w = torch.zeros(phi.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (torch.nn.functional.softplus(1.0 - diff @ w) * wp).sum() / wp.sum() + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def restored_features(paths: list[Path], cache: Optional[str], t0: float) -> tuple[torch.Tensor, list[dict]]:
    """Features and meta of ``restored_samples`` for every training face (own cache: ``<cache>.restored``)."""
    from ...models.restorers import load_restorer
    from ...models.registry import EMBEDDED_RESTORER
    from ..eval.classical import load_params
    store = Path(str(cache) + ".restored") if cache else None
    rows, meta = [], []
    if store and store.is_file():
        blob = torch.load(store, weights_only=True)
        rows, meta = [blob["features"]], json.loads(blob["meta"])
    done = len({m["face"] for m in meta})
    restorer, classical = load_restorer(EMBEDDED_RESTORER), load_params()
    for fi, p in enumerate(paths):
        if fi < done:
            continue
        face, regions = B.load_faces([p], 512)
        samples = restored_samples(face, regions, fi, restorer, classical)
        with torch.inference_mode():
            rows.append(features(torch.cat([s_["image"] for s_ in samples])).double())
        meta += [{"face": fi, "kind": s_["kind"], "t": 0.0, "source": None, "severity": s_["severity"],
                  "ssim": s_["ssim"]} for s_ in samples]
        if store:
            torch.save({"features": torch.cat(rows), "meta": json.dumps(meta)}, store)
        print(f"  restored {fi + 1}/{len(paths)} faces, {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    return torch.cat(rows).double(), meta


# the strongest third of these kinds sets the scale (raw 2); gan_texture (issue 25) is left out so the scale
# means what it meant before it came
CALIBRATION_KINDS = ("blur", "downscale", "noise", "jpeg", "mosaic", "oversmooth", "blotch", "ringing", "ghosting",
                     "classic", "artefacts")


def synthetic_features(paths: list[Path], per_kind: int, cache: Optional[str], t0: float
                       ) -> tuple[list[torch.Tensor], list[dict]]:
    """Features and meta of ``samples_for`` for every training face (written to ``cache`` after each face)."""
    rows, meta = [], []
    if cache and Path(cache).is_file():       # resume: faces already done are reused
        blob = torch.load(cache, weights_only=True)
        rows, meta = [blob["features"]], json.loads(blob["meta"])
    done = len({m["face"] for m in meta})
    for fi, p in enumerate(paths):
        if fi < done:
            continue
        face, regions = B.load_faces([p], 512)
        rng_face = np.random.default_rng([SEED_OFFSET, fi])
        samples = samples_for(face, regions, rng_face, SEED_OFFSET + 1000 * fi, per_kind)
        imgs = torch.cat([s[2] for s in samples])
        with torch.inference_mode():
            rows.append(torch.cat([features(imgs[i:i + 8]) for i in range(0, len(imgs), 8)]).double())
        meta += [{"face": fi, "kind": k, "t": t, "source": src} for k, t, _, src in samples]
        if cache:
            torch.save({"features": torch.cat(rows), "meta": json.dumps(meta)}, cache)
        print(f"  {fi + 1}/{len(paths)} faces, {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    return rows, meta


def pair_counts(meta: list[dict], pairs: list[tuple[int, int]]) -> dict[str, int]:
    """How many pairs of each family the fit orders."""
    counts: dict[str, int] = {}
    for a, b in pairs:
        ka, kb = meta[a]["kind"], meta[b]["kind"]
        if str(ka).startswith("restored:"):
            fam = "restoration outcomes by SSIM"
        elif ka == "clean":
            fam = "clean > damaged"
        elif kb in ("mosaic8", "lq_texture"):
            src = {"blurry_lq": "blurry LQ", "small_copy": "128² copy"}.get(ka, "degraded")
            fam = f"{src} > its {'mosaic' if kb == 'mosaic8' else 'GAN texture'}"
        elif ka == "baseline":
            fam = "NL-means+unsharp > its LQ"
        else:
            fam = "milder > stronger"
        counts[fam] = counts.get(fam, 0) + 1
    return counts


def fit(feats: torch.Tensor, meta: list[dict], per_kind: int, mild_weight: float,
        texture_weight: float) -> tuple[dict, dict]:
    """Standardise by the clean faces, fit the ranking weights and scale them: clean median 9, strong damage 2."""
    clean = feats[[i for i, m in enumerate(meta) if m["kind"] == "clean"]]
    mean, std = clean.mean(0), clean.std(0).clamp_min(1e-3)
    z = (feats - mean) / std
    pairs = make_pairs(meta) + restored_pairs(meta)
    w = fit_weights(z, pairs, weights=pair_weights(meta, pairs, per_kind, mild_weight, texture_weight))
    s = expand(z) @ w
    kinds = np.array([m["kind"] for m in meta])
    ts = np.array([m["t"] for m in meta])
    hi = float(s[torch.from_numpy(kinds == "clean")].median())
    lo = float(s[torch.from_numpy((ts > 0.66) & np.isin(kinds, CALIBRATION_KINDS))].median())
    scale = 7.0 / (hi - lo)
    weight, bias = w * scale, torch.tensor(2.0 - lo * scale, dtype=torch.float64)
    raw = expand(z) @ weight + bias
    a = torch.tensor([p[0] for p in pairs])
    b = torch.tensor([p[1] for p in pairs])
    sd = {"mean": mean.float(), "std": std.float(), "weight": weight.float(), "bias": bias.float(),
          "norm_range": torch.tensor([0.0, 10.0])}
    stats = {"pairs": len(pairs), "pair_accuracy": float((raw[a] > raw[b]).double().mean()),
             "pair_counts": pair_counts(meta, pairs)}
    return sd, stats


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="London set folder (default ../shared/data/london)")
    parser.add_argument("--faces", type=int, default=0, help="use the first N training identities (0 = all)")
    parser.add_argument("--per-kind", type=int, default=4, help="random severities per distortion and face")
    parser.add_argument("--mild-weight", type=float, default=8.0,
                        help="weight of the clean > mildest-version pairs in the ranking loss")
    parser.add_argument("--texture-weight", type=float, default=TEXTURE_WEIGHT,
                        help="weight of the LQ > LQ + GAN texture pairs in the ranking loss")
    parser.add_argument("--no-restored", dest="restored", action="store_false",
                        help="leave out the real restoration outcomes (LQ / classical / default restorer by SSIM)")
    parser.add_argument("--cache", default=None, help="features .pt, written after every face; a rerun resumes")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    paths = london_split(args.data)["train_neutral"][: args.faces or None]
    if not paths:
        print("error: no London training images found", file=sys.stderr)
        return 1
    t0 = time.time()
    rows, meta = synthetic_features(paths, args.per_kind, args.cache, t0)
    if args.restored:
        r_rows, r_meta = restored_features(paths, args.cache, t0)
        rows, meta = rows + [r_rows], meta + r_meta
    feats = torch.cat(rows).double()
    keep = [i for i, m in enumerate(meta) if m["face"] < len(paths)]
    sd, stats = fit(feats[keep], [meta[i] for i in keep], args.per_kind, args.mild_weight, args.texture_weight)
    from ...models.loading import save_safetensors
    save_safetensors(sd, args.out, metadata={
        "fitted_on": "London set neutral, training identities (lab.datasets.london_split)",
        "train_files": ",".join(p.name for p in paths), "features": ",".join(FEATURES),
        "pairs": str(stats["pairs"]), "pair_accuracy": f"{stats['pair_accuracy']:.4f}",
        "pair_counts": json.dumps(stats["pair_counts"]), "license": "CC BY 4.0 data (DeBruine & Jones 2017)"})
    print(json.dumps({"faces": len(paths), "images": len(keep), **stats, "seconds": round(time.time() - t0, 1),
                      "out": args.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
