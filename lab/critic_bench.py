"""Critic bench: does a quality metric agree with the eye on faces, including restorer artefacts?

    python -m facerefine.lab.critic_bench [--metrics face-iqa,face-niqe,piqe] [--faces 20] [--size 512]
                                          [--qualityface PATH/last.pth] [--json OUT.json] [--docs docs/quality.md]

Held-out London identities (``lab.datasets.london_split``; never used to fit anything), aligned to the
crop step's 5-point template at 512² with their landmark files, each degraded at five rising severities of every kind below. Per metric and kind it reports the
mean normalised score per level, Spearman rho between severity and quality (falling score = positive),
whether the clean faces' mean ranks above every level, and the share of faces whose clean version
scores above all five of its degraded versions. Two ordering checks follow:

* mosaic-vs-source: an 8-px mosaic of a face (clean or degraded) never scores better than its source;
* baseline-vs-LQ: OpenCV NL-means + unsharp mask never scores worse than the degraded input it came from.

``--docs`` rewrites the block between ``<!-- critic-bench:start -->`` and ``<!-- critic-bench:end -->``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from . import artifacts as A

# severities at 512² (pixel sizes scale with the crop size)
LEVELS: dict[str, tuple[float, ...]] = {
    "blur": (0.7, 1.2, 2.0, 3.0, 4.5),              # Gaussian sigma px
    "downscale": (1.5, 2.0, 3.0, 4.0, 6.0),         # factor (antialiased down, bicubic up)
    "noise": (0.03, 0.05, 0.07, 0.10, 0.14),        # Gaussian sigma, 0..1 units
    "jpeg": (70, 50, 30, 18, 10),                   # quality
    "mosaic": (3, 4, 6, 8, 12),                     # block px
    "oversmooth": (0.2, 0.4, 0.6, 0.8, 1.0),        # bilateral strength, inside the face only
    "blotch": (0.012, 0.02, 0.03, 0.045, 0.065),    # rms chroma of low-frequency patches on eyes and lips
    "ringing": (0.5, 1.0, 1.75, 2.75, 4.0),         # unsharp amount (sigma 2 px)
    "ghosting": (0.1, 0.17, 0.25, 0.33, 0.42),      # alpha of a copy shifted by 8..14 px
    "classic": (1, 2, 3, 4, 5),                     # blur -> downscale -> noise/2 -> JPEG at the same level
    "artefacts": (1, 2, 3, 4, 5),                   # oversmooth + blotch + ringing at the same level
}
KINDS = tuple(LEVELS)
SEVERITIES = (1, 2, 3, 4, 5)
MOSAIC_SOURCES = (("clean", 0), ("blur", 2), ("classic", 2), ("classic", 4))
BASELINE_LQ = (("classic", 1), ("classic", 2), ("classic", 3), ("classic", 4), ("classic", 5),
               ("noise", 2), ("noise", 4))


# ---------------------------------------------------------------- faces
def london_landmarks(image_path: Path) -> Optional[np.ndarray]:
    """The 189 WebMorph points of a London portrait in 768² pixels, or None."""
    lm = Path(image_path).with_suffix(".landmarks.json")
    if not lm.is_file():
        return None
    d = json.loads(lm.read_text())
    pts = np.asarray(d["points"], np.float64)
    src = d.get("source_size", [768, 768])
    scale = float(d.get("scale", 768.0 / float(src[0])))
    # points are stored in the 768 image's pixels when scale maps source_size to 768
    if abs(src[0] * scale - 768) > 2:
        pts = pts * 768.0 / (src[0] * scale)
    return pts


def load_faces(paths: Sequence[Path], size: int = 512) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Aligned crops [N,3,S,S] in the crop step's framing (least-squares similarity from the pupils and mouth
    corners to the crop step's 5-point template, bicubic) and soft region masks ('face', 'eyes', 'lips'
    [N,1,S,S]) from the landmarks."""
    import cv2

    from ..core.crop.align import template, umeyama_similarity
    from PIL import Image
    faces, regions = [], {"face": [], "eyes": [], "lips": []}
    for p in paths:
        pts = london_landmarks(p)
        if pts is None:
            raise FileNotFoundError(f"no landmarks next to {p}")
        with Image.open(p) as im:
            im = im.convert("RGB")
            if im.size != (768, 768):
                im = im.resize((768, 768), Image.BICUBIC)
            arr = np.asarray(im)
        lip = pts[list(A.LONDON_LIPS)]
        src = np.array([pts[0], pts[1], lip[lip[:, 0].argmin()], lip[lip[:, 0].argmax()]])  # pupils, mouth corners
        tpl = template(size)[[0, 1, 3, 4]]
        mat = umeyama_similarity(src, tpl)
        warped = cv2.warpAffine(arr, mat, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        faces.append(torch.from_numpy(warped.copy()).permute(2, 0, 1).float() / 255)
        q = pts @ mat[:, :2].T + mat[:, 2]
        lips = q[list(A.LONDON_LIPS)]
        r = A.face_regions((tuple(q[0]), tuple(q[1])), tuple(lips.mean(0)), size,
                           eye_points=q[list(A.LONDON_EYES)], lip_points=lips)
        for k in regions:
            regions[k].append(r[k])
    return torch.stack(faces), {k: torch.stack(v) for k, v in regions.items()}


def heldout_paths(count: int, root=None) -> list[Path]:
    from .datasets import london_split
    paths = london_split(root)["heldout_neutral"][:count]
    if not paths:
        raise FileNotFoundError("no held-out London faces found (../shared/data/london)")
    return paths


# ---------------------------------------------------------------- distortions
def _ghost_shift(index: int, seed: int) -> tuple[int, int]:
    rng = np.random.default_rng(1000 + 7919 * seed + index)
    angle = rng.uniform(0, 2 * math.pi)
    length = rng.uniform(8, 14)
    return int(round(length * math.sin(angle))), int(round(length * math.cos(angle)))


def distort(x: torch.Tensor, regions: dict[str, torch.Tensor], kind: str, level: int,
            seed: int = 0, value: Optional[float] = None) -> torch.Tensor:
    """x [N,3,S,S] at severity ``level`` 1..5 of ``kind`` (0 = unchanged); ``value`` overrides the level's setting."""
    from . import degrade as D
    if level == 0 and value is None:
        return x.clone()
    if kind not in LEVELS:
        raise ValueError(f"unknown distortion {kind!r}; choose from {KINDS}")
    v = float(value) if value is not None else float(LEVELS[kind][level - 1])
    scale = x.shape[-1] / 512.0
    gen = torch.Generator().manual_seed(seed)
    if kind == "blur":
        return D.gaussian_blur(x, v * scale)
    if kind == "downscale":
        return D.downscale(x, v)
    if kind == "noise":
        return D.gaussian_noise(x, v, generator=gen)
    if kind == "jpeg":
        return D.jpeg(x, v)
    if kind == "mosaic":
        return A.mosaic(x, max(1, round(v * scale)))
    if kind == "oversmooth":
        return A.oversmooth(x, regions["face"], v)
    if kind == "blotch":
        return A.color_blotches(x, (regions["eyes"] + regions["lips"]).clamp(0, 1), v, seed=seed)
    if kind == "ringing":
        return A.ringing(x, v)
    if kind == "ghosting":
        return torch.cat([A.ghosting(x[i:i + 1], v, _ghost_shift(i, seed)) for i in range(x.shape[0])])
    i = int(round(v)) - 1 if value is None else None
    frac = (v - 1) / 4 if value is None else v        # 0..1 position in the range
    if kind == "classic":
        def at(k: str) -> float:
            lo, hi = LEVELS[k][0], LEVELS[k][-1]
            return lo + (hi - lo) * frac if i is None else LEVELS[k][i]
        y = D.gaussian_blur(x, at("blur") * scale)
        y = D.downscale(y, at("downscale"))
        y = D.gaussian_noise(y, 0.5 * at("noise"), generator=gen)
        return D.jpeg(y, round(at("jpeg"))).clamp(0, 1)
    # artefacts
    def at(k: str) -> float:
        lo, hi = LEVELS[k][0], LEVELS[k][-1]
        return lo + (hi - lo) * frac if i is None else LEVELS[k][i]
    y = A.oversmooth(x, regions["face"], at("oversmooth"))
    y = A.color_blotches(y, (regions["eyes"] + regions["lips"]).clamp(0, 1), at("blotch"), seed=seed)
    return A.ringing(y, at("ringing"))


# ---------------------------------------------------------------- metrics
ScoreFn = Callable[[torch.Tensor], torch.Tensor]


class QualityFaceMetric:
    """qualityface 1.0.3 (PyPI, BSD): MobileNetV2 face-recognition suitability at 128², loaded without its package.

    Its package loads the checkpoint with an unrestricted torch.load at import and needs siriusbackbone,
    so the bench maps the state dict onto torchvision's MobileNetV2 features and loads it weights_only.
    """

    name = "qualityface"

    def __init__(self, path: str):
        import torchvision
        sd = torch.load(path, map_location="cpu", weights_only=True)
        prefix = "module.backbone.net."
        feats = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix + "features.")}
        net = torchvision.models.mobilenet_v2()
        missing, unexpected = net.load_state_dict({**net.state_dict(), **feats}, strict=False)
        if unexpected or len(feats) != len([k for k in net.state_dict() if k.startswith("features.")]):
            raise ValueError(f"unexpected qualityface checkpoint layout ({len(feats)} feature tensors)")
        self.features = net.features.eval()
        self.fc = torch.nn.Linear(1280, 1)
        self.fc.load_state_dict({"weight": sd["module.classify.weight"], "bias": sd["module.classify.bias"]})

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F
        with torch.inference_mode():
            y = F.interpolate(x.float(), size=(128, 128), mode="bilinear", antialias=True, align_corners=False)
            f = self.features((y - 0.5) / 0.5).mean(dim=(2, 3))
            return self.fc(f).flatten().float()   # raw, higher = better (not mapped to 0..1)


def load_metrics(names: Sequence[str], device: str = "cpu", qualityface: Optional[str] = None) -> dict:
    from ..core.score import get_metric
    out = {}
    for name in names:
        if name == "qualityface":
            if not qualityface:
                raise FileNotFoundError("qualityface needs --qualityface PATH to its checkpoints/last.pth "
                                        "(from the PyPI wheel qualityface-1.0.3)")
            out[name] = QualityFaceMetric(qualityface)
        else:
            m = get_metric(name, device)
            out[m.name] = m
    return out


def spearman(values: Sequence[float]) -> float:
    from scipy.stats import spearmanr
    rho = spearmanr(list(range(len(values))), list(values)).correlation
    return float("nan") if rho is None or not np.isfinite(rho) else float(rho)


# ---------------------------------------------------------------- the bench
def run(metrics: dict, faces: torch.Tensor, regions: dict, kinds: Sequence[str] = KINDS,
        levels: Sequence[int] = SEVERITIES, seed: int = 0, mosaic_sources=MOSAIC_SOURCES,
        baseline_lq=BASELINE_LQ, log: Optional[Callable[[str], None]] = None) -> dict:
    """Scores of every metric on every (kind, level); degraded images are made once and shared."""
    timing = {name: 0.0 for name in metrics}

    def score(img: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name, m in metrics.items():
            t0 = time.perf_counter()
            if hasattr(m, "info"):   # core metric: normalised but unclipped, so heavy damage keeps its rank
                from ..core.score import normalize
                out[name] = normalize(m.info, m.raw(img), clip=False).float().cpu()
            else:
                out[name] = m.normalized(img).float().cpu()
            timing[name] += time.perf_counter() - t0
        return out

    clean = score(faces)
    per_kind: dict[str, dict[str, list]] = {name: {} for name in metrics}
    cache: dict[tuple[str, int], torch.Tensor] = {}
    for kind in kinds:
        rows = {name: [] for name in metrics}
        for lv in levels:
            img = distort(faces, regions, kind, lv, seed)
            if (kind, lv) in set(mosaic_sources) | set(baseline_lq):
                cache[(kind, lv)] = img
            for name, s in score(img).items():
                rows[name].append(s)
        for name in metrics:
            per_kind[name][kind] = rows[name]
        if log:
            log(f"{kind}: " + "  ".join(f"{n} " + ",".join(f"{float(s.mean()):.3f}" for s in rows[n])
                                        for n in metrics))
    results = {}
    for name in metrics:
        c = clean[name]
        kinds_out = {}
        for kind, scores in per_kind[name].items():
            means = [float(s.mean()) for s in scores]
            stack = torch.stack(scores)                       # [L, N]
            rho = -spearman(means)
            face_rhos = [-spearman(stack[:, i].tolist()) for i in range(stack.shape[1])]
            kinds_out[kind] = {
                "means": [round(m, 4) for m in means],
                "rho": round(rho, 4),
                "median_face_rho": round(float(np.nanmedian(face_rhos)), 4),
                "clean_above_all_means": bool(max(means) < float(c.mean())),
                "faces_clean_first": round(float((stack < c.unsqueeze(0)).all(0).float().mean()), 3),
                "pass": bool(rho >= 0.9 and max(means) < float(c.mean())),
            }
        results[name] = {"clean_mean": round(float(c.mean()), 4), "kinds": kinds_out}

    # ordering checks
    for src_kind, src_lv in mosaic_sources:
        src = faces if src_kind == "clean" else cache.get((src_kind, src_lv))
        if src is None:
            src = distort(faces, regions, src_kind, src_lv, seed)
        src_scores = clean if src_kind == "clean" else score(src)
        mos_scores = score(A.mosaic(src, max(1, round(8 * faces.shape[-1] / 512))))
        for name in metrics:
            ok = mos_scores[name] <= src_scores[name]
            results[name].setdefault("mosaic_vs_source", {})[f"{src_kind}{src_lv or ''}"] = {
                "faces_ok": round(float(ok.float().mean()), 3),
                "source_mean": round(float(src_scores[name].mean()), 4),
                "mosaic_mean": round(float(mos_scores[name].mean()), 4)}
    for lq_kind, lq_lv in baseline_lq:
        lq = cache.get((lq_kind, lq_lv))
        if lq is None:
            lq = distort(faces, regions, lq_kind, lq_lv, seed)
        lq_scores = score(lq)
        base_scores = score(A.nlm_unsharp(lq))
        for name in metrics:
            ok = base_scores[name] >= lq_scores[name]
            results[name].setdefault("baseline_vs_lq", {})[f"{lq_kind}{lq_lv}"] = {
                "faces_ok": round(float(ok.float().mean()), 3),
                "lq_mean": round(float(lq_scores[name].mean()), 4),
                "baseline_mean": round(float(base_scores[name].mean()), 4)}
    for name, r in results.items():
        r["all_kinds_pass"] = all(k["pass"] for k in r["kinds"].values())
        r["all_faces_clean_first"] = all(k["faces_clean_first"] == 1.0 for k in r["kinds"].values())
        r["mosaic_never_better"] = all(v["faces_ok"] == 1.0 for v in r.get("mosaic_vs_source", {}).values())
        r["baseline_never_worse"] = all(v["faces_ok"] == 1.0 for v in r.get("baseline_vs_lq", {}).values())
        r["seconds_scoring"] = round(timing[name], 1)
    return {"faces": int(faces.shape[0]), "size": int(faces.shape[-1]), "seed": seed, "metrics": results}


# ---------------------------------------------------------------- report
def markdown(report: dict, command: str) -> str:
    names = list(report["metrics"])
    lines = [f"Made with `{command}` on {report['faces']} held-out London faces at {report['size']}². "
             "Cells: Spearman ρ between severity and quality (1.00 = the score falls at every step), then the "
             "share of faces whose clean version scores above all five degraded versions. ✔ = ρ ≥ 0.9 and the "
             "clean mean above every level's mean.", "",
             "| distortion (levels 1→5) | " + " | ".join(f"`{n}`" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for kind in KINDS:
        if kind not in report["metrics"][names[0]]["kinds"]:
            continue
        cells = []
        for n in names:
            k = report["metrics"][n]["kinds"][kind]
            cells.append(f"{k['rho']:.2f} · {k['faces_clean_first']:.0%} {'✔' if k['pass'] else '✘'}")
        levels = ", ".join(str(v) for v in LEVELS[kind])
        lines.append(f"| {kind} ({levels}) | " + " | ".join(cells) + " |")
    lines.append("| clean mean (normalised) | " + " | ".join(
        f"{report['metrics'][n]['clean_mean']:.3f}" for n in names) + " |")
    lines.append("| 8-px mosaic ≤ source (share of face×source pairs) | " + " | ".join(
        f"{np.mean([v['faces_ok'] for v in report['metrics'][n]['mosaic_vs_source'].values()]):.0%}"
        for n in names) + " |")
    lines.append("| NL-means+unsharp ≥ its LQ (share of face×LQ pairs) | " + " | ".join(
        f"{np.mean([v['faces_ok'] for v in report['metrics'][n]['baseline_vs_lq'].values()]):.0%}"
        for n in names) + " |")
    lines.append("| scoring time, whole bench (s) | " + " | ".join(
        f"{report['metrics'][n]['seconds_scoring']:.0f}" for n in names) + " |")
    lines += ["", "Mean normalised score per level (clean → level 1 … 5):", "",
              "| metric | distortion | clean | 1 | 2 | 3 | 4 | 5 |", "|---|---|---|---|---|---|---|---|"]
    for n in names:
        r = report["metrics"][n]
        for kind, k in r["kinds"].items():
            lines.append(f"| {n} | {kind} | {r['clean_mean']:.3f} | " + " | ".join(f"{m:.3f}" for m in k["means"]) + " |")
    return "\n".join(lines) + "\n"


START, END = "<!-- critic-bench:start -->", "<!-- critic-bench:end -->"


def write_docs(path: str | Path, block: str) -> None:
    """Replace the marked block of ``path`` (appended under a heading if the markers are missing)."""
    p = Path(path)
    text = p.read_text() if p.is_file() else ""
    new = f"{START}\n{block}{END}"
    if START in text and END in text:
        a, rest = text.split(START, 1)
        _, b = rest.split(END, 1)
        text = a + new + b
    else:
        text = text.rstrip("\n") + "\n\n## Critic bench (held-out London faces)\n\n" + new + "\n"
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(p)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", default="face-iqa,face-niqe,piqe")
    parser.add_argument("--faces", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--qualityface", default=None, help="qualityface checkpoints/last.pth (optional metric)")
    parser.add_argument("--json", default=None, help="write the full report here")
    parser.add_argument("--docs", default=None, help="update the critic-bench block of this markdown file")
    args = parser.parse_args(argv)
    faces, regions = load_faces(heldout_paths(args.faces), args.size)
    metrics = load_metrics([m.strip() for m in args.metrics.split(",") if m.strip()], args.device, args.qualityface)
    report = run(metrics, faces, regions, [k for k in args.kinds.split(",") if k], seed=args.seed,
                 log=lambda m: print(m, file=sys.stderr, flush=True))
    given = list(argv if argv is not None else sys.argv[1:])
    kept = [a for i, a in enumerate(given)      # the --json destination is not part of the measurement
            if not a.startswith("--json") and not (i > 0 and given[i - 1] == "--json")]
    command = "python -m facerefine.lab.critic_bench " + " ".join(kept)
    report["command"] = command
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if args.docs:
        write_docs(args.docs, markdown(report, command))
    print(json.dumps({n: {"all_kinds_pass": r["all_kinds_pass"], "mosaic_never_better": r["mosaic_never_better"],
                          "baseline_never_worse": r["baseline_never_worse"]} for n, r in report["metrics"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
