"""Critic bench: does a quality metric agree with the eye on faces, including restorer artefacts?

    python -m facerefine.lab.critic_bench [--metrics face-iqa,face-niqe,piqe] [--faces 20] [--size 512]
                                          [--qualityface PATH/last.pth] [--json OUT.json] [--docs docs/quality.md]

Held-out London identities (``lab.datasets.london_split``; never used to fit anything), aligned to the
crop step's 5-point template at 512² with their landmark files, each degraded at five rising severities of every
kind below. Per metric and kind it reports the mean normalised score per level, Spearman rho between severity
and quality (falling score = positive), whether the clean faces' mean ranks above every level, and the share of
faces whose clean version scores above all five of its degraded versions. Three ordering checks follow, on named
sources (``source``): the clean face, bench kinds at a level, and blurry LQs (``BLURRY_LQ``: blur sigma 4.5,
x6 and x8 down, the benchmark's heavy preset from lab/degrade.py):

* mosaic-vs-source: an 8-px mosaic of a face (clean, mildly degraded or a blurry LQ) never scores better than
  its source, at the bench's size and on 128² copies (8-px blocks of the copy: a small face's mosaic);
* GAN-texture-vs-source: hallucinated texture (``gan_texture`` at each of its five levels) added to a clean face
  or to a blurry LQ never scores better than the face it was added to (what a detail-seeking model could exploit);
* baseline-vs-LQ: OpenCV NL-means + unsharp mask never scores worse than the degraded input it came from.

``--docs`` rewrites the block between ``<!-- critic-bench:start -->`` and ``<!-- critic-bench:end -->``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
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
    "gan_texture": (0.012, 0.018, 0.026, 0.036, 0.05),  # rms of worm + checkerboard texture on skin and background
    "classic": (1, 2, 3, 4, 5),                     # blur -> downscale -> noise/2 -> JPEG at the same level
    "artefacts": (1, 2, 3, 4, 5),                   # oversmooth + blotch + ringing at the same level
}
KINDS = tuple(LEVELS)
SEVERITIES = (1, 2, 3, 4, 5)
# named sources of the ordering checks (see ``source``): "clean", "<kind><level>", "<kind>_x<value>",
# "preset_<name>" (a lab.degrade benchmark preset, degraded at low resolution and bicubic back up)
BLURRY_LQ = ("blur5", "downscale5", "downscale_x8", "preset_heavy")
MOSAIC_SOURCES = ("clean", "blur2", "classic2", "classic4") + BLURRY_LQ
GAN_SOURCES = ("clean",) + BLURRY_LQ
BASELINE_LQ = ("classic1", "classic2", "classic3", "classic4", "classic5", "noise2", "noise4")
MOSAIC_BLOCK = 8                                    # px at 512²
SMALL = 128     # the mosaic check again on 128² copies with 8-px blocks of the copy (a small face: 32 px at 512²)


@dataclass(frozen=True)
class Checks:
    """The ordering checks of ``run``: which named sources each one uses."""
    mosaic_sources: tuple = MOSAIC_SOURCES          # 8-px mosaic <= its source
    mosaic_small: Optional[int] = SMALL             # ... and on copies at this size (None: not)
    gan_sources: tuple = GAN_SOURCES                # source + GAN texture <= source, at every ``gan_levels``
    gan_levels: tuple = SEVERITIES
    baseline_lq: tuple = BASELINE_LQ                # NL-means + unsharp >= its LQ


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
    if kind == "gan_texture":
        return A.gan_texture(x, v, seed=seed)
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


def source(faces: torch.Tensor, regions: dict[str, torch.Tensor], name: str, seed: int = 0) -> torch.Tensor:
    """A named source of the ordering checks: "clean"; "<kind><level>" (e.g. "blur5"); "<kind>_x<value>"
    (e.g. "downscale_x8": the kind at that setting); "preset_<name>" (``lab.degrade.degrade_fixed``)."""
    if name == "clean":
        return faces
    if name.startswith("preset_"):
        from .degrade import degrade_fixed
        return degrade_fixed(faces, name[len("preset_"):], seed=seed)
    if "_x" in name:
        kind, value = name.rsplit("_x", 1)
        return distort(faces, regions, kind, 1, seed, value=float(value))
    kind = name.rstrip("0123456789")
    if kind == name or kind not in LEVELS:
        raise ValueError(f"unknown source {name!r}")
    return distort(faces, regions, kind, int(name[len(kind):]), seed)


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
class _Scorer:
    """Calls every metric on a batch (normalised, unclipped for core metrics) and keeps their scoring time."""

    def __init__(self, metrics: dict):
        self.metrics = metrics
        self.timing = {name: 0.0 for name in metrics}

    def __call__(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name, m in self.metrics.items():
            t0 = time.perf_counter()
            if hasattr(m, "info"):   # core metric: normalised but unclipped, so heavy damage keeps its rank
                from ..core.score import normalize
                out[name] = normalize(m.info, m.raw(img), clip=False).float().cpu()
            else:
                out[name] = m.normalized(img).float().cpu()
            self.timing[name] += time.perf_counter() - t0
        return out


class _Sources:
    """Named sources (``source``) with their scores, each made and scored once."""

    def __init__(self, faces: torch.Tensor, regions: dict, seed: int, score: _Scorer, keep: set):
        self.faces, self.regions, self.seed, self.score, self.keep = faces, regions, seed, score, keep
        self.images: dict[str, torch.Tensor] = {}
        self.scores: dict[str, dict[str, torch.Tensor]] = {}

    def put(self, name: str, img: torch.Tensor, scores: dict) -> None:
        self.scores[name] = scores
        if name in self.keep:
            self.images[name] = img

    def get(self, name: str) -> tuple[torch.Tensor, dict]:
        if name not in self.images:
            img = source(self.faces, self.regions, name, self.seed)
            self.images[name] = img
            if name not in self.scores:
                self.scores[name] = self.score(img)
        return self.images[name], self.scores[name]


def _kind_summary(scores: list[torch.Tensor], clean: torch.Tensor) -> dict:
    means = [float(s.mean()) for s in scores]
    stack = torch.stack(scores)                       # [L, N]
    rho = -spearman(means)
    face_rhos = [-spearman(stack[:, i].tolist()) for i in range(stack.shape[1])]
    return {"means": [round(m, 4) for m in means], "rho": round(rho, 4),
            "median_face_rho": round(float(np.nanmedian(face_rhos)), 4),
            "clean_above_all_means": bool(max(means) < float(clean.mean())),
            "faces_clean_first": round(float((stack < clean.unsqueeze(0)).all(0).float().mean()), 3),
            "pass": bool(rho >= 0.9 and max(means) < float(clean.mean()))}


def small_copy(x: torch.Tensor, size: int) -> torch.Tensor:
    """x brought down to size² (antialiased bilinear), as an 8-bit image."""
    import torch.nn.functional as F
    y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (y.clamp(0, 1) * 255).round() / 255


def _check_mosaic(sources: _Sources, names: Sequence[str], small: Optional[int], results: dict) -> None:
    block = max(1, round(MOSAIC_BLOCK * sources.faces.shape[-1] / 512))
    for src_name in names:
        src, src_scores = sources.get(src_name)
        cases = [(src_name, src_scores, sources.score(A.mosaic(src, block)))]
        if small:
            copy = small_copy(src, small)
            cases.append((f"{src_name}@{small}", sources.score(copy), sources.score(A.mosaic(copy, MOSAIC_BLOCK))))
        for key, s_scores, mos_scores in cases:
            for name, r in results.items():
                ok = mos_scores[name] <= s_scores[name]
                r.setdefault("mosaic_vs_source", {})[key] = {
                    "faces_ok": round(float(ok.float().mean()), 3), "blurry_lq": src_name in BLURRY_LQ,
                    "source_mean": round(float(s_scores[name].mean()), 4),
                    "mosaic_mean": round(float(mos_scores[name].mean()), 4)}


def _check_gan(sources: _Sources, names: Sequence[str], levels: Sequence[int], results: dict) -> None:
    for src_name in names:
        src, src_scores = sources.get(src_name)
        per_level = []
        for lv in levels:
            key = f"gan_texture{lv}"
            if src_name == "clean" and key in sources.scores:      # made by the kind rows already
                per_level.append(sources.scores[key])
            else:
                per_level.append(sources.score(distort(src, sources.regions, "gan_texture", lv, sources.seed)))
        for name, r in results.items():
            tex = torch.stack([s[name] for s in per_level])            # [L, N]
            r.setdefault("gan_vs_source", {})[src_name] = {
                "faces_ok": round(float((tex <= src_scores[name].unsqueeze(0)).float().mean()), 3),
                "levels": list(levels), "source_mean": round(float(src_scores[name].mean()), 4),
                "texture_means": [round(float(t.mean()), 4) for t in tex]}


def _check_baseline(sources: _Sources, names: Sequence[str], results: dict) -> None:
    for lq_name in names:
        lq, lq_scores = sources.get(lq_name)
        base_scores = sources.score(A.nlm_unsharp(lq))
        for name, r in results.items():
            ok = base_scores[name] >= lq_scores[name]
            r.setdefault("baseline_vs_lq", {})[lq_name] = {
                "faces_ok": round(float(ok.float().mean()), 3),
                "lq_mean": round(float(lq_scores[name].mean()), 4),
                "baseline_mean": round(float(base_scores[name].mean()), 4)}


def run(metrics: dict, faces: torch.Tensor, regions: dict, kinds: Sequence[str] = KINDS,
        levels: Sequence[int] = SEVERITIES, seed: int = 0, checks: Checks = Checks(),
        log: Optional[Callable[[str], None]] = None) -> dict:
    """Scores of every metric on every (kind, level) and the ordering checks; images are made once and shared."""
    score = _Scorer(metrics)
    sources = _Sources(faces, regions, seed, score, set(checks.mosaic_sources) | set(checks.baseline_lq)
                       | set(checks.gan_sources))
    clean = score(faces)
    sources.put("clean", faces, clean)
    results = {name: {"clean_mean": round(float(clean[name].mean()), 4), "kinds": {}} for name in metrics}
    for kind in kinds:
        rows = {name: [] for name in metrics}
        for lv in levels:
            img = distort(faces, regions, kind, lv, seed)
            scores = score(img)
            sources.put(f"{kind}{lv}", img, scores)
            for name, s in scores.items():
                rows[name].append(s)
        for name in metrics:
            results[name]["kinds"][kind] = _kind_summary(rows[name], clean[name])
        if log:
            log(f"{kind}: " + "  ".join(f"{n} " + ",".join(f"{float(s.mean()):.3f}" for s in rows[n])
                                        for n in metrics))
    _check_mosaic(sources, checks.mosaic_sources, checks.mosaic_small, results)
    _check_gan(sources, checks.gan_sources, checks.gan_levels, results)
    _check_baseline(sources, checks.baseline_lq, results)
    for name, r in results.items():
        r["all_kinds_pass"] = all(k["pass"] for k in r["kinds"].values())
        r["all_faces_clean_first"] = all(k["faces_clean_first"] == 1.0 for k in r["kinds"].values())
        for flag, key in (("mosaic_never_better", "mosaic_vs_source"), ("gan_texture_never_better", "gan_vs_source"),
                          ("baseline_never_worse", "baseline_vs_lq")):
            r[flag] = all(v["faces_ok"] == 1.0 for v in r.get(key, {}).values())
        r["seconds_scoring"] = round(score.timing[name], 1)
    return {"faces": int(faces.shape[0]), "size": int(faces.shape[-1]), "seed": seed, "metrics": results}


# ---------------------------------------------------------------- report
_CHECK_ROWS = (
    ("8-px mosaic ≤ source: clean, blur 2, classic 2 and 4 (share of face×source pairs)", "mosaic_vs_source",
     lambda src: "@" not in src and src not in BLURRY_LQ),
    ("8-px mosaic ≤ blurry LQ: blur 4.5, ×6 and ×8 down, heavy preset (face×LQ pairs)", "mosaic_vs_source",
     lambda src: "@" not in src and src in BLURRY_LQ),
    (f"8-px mosaic ≤ source, on {SMALL}² copies of all of them (face×source pairs)", "mosaic_vs_source",
     lambda src: "@" in src),
    ("GAN texture (levels 1–5) ≤ the clean face (face×level pairs)", "gan_vs_source", lambda src: src == "clean"),
    ("GAN texture (levels 1–5) ≤ its blurry LQ (face×LQ×level triples)", "gan_vs_source",
     lambda src: src in BLURRY_LQ),
    ("NL-means+unsharp ≥ its LQ (share of face×LQ pairs)", "baseline_vs_lq", lambda src: True),
)


def _share(v: float) -> str:
    """A share as a percentage; never rounded up to 100 % (or down to 0 %) when not all (none) are right."""
    return f"{v:.1%}" if (0.995 <= v < 1.0 or 0 < v < 0.005) else f"{v:.0%}"


def _source_table(report: dict) -> list[str]:
    """Mean scores of each ordering-check source, its 8-px mosaic and its GAN-textured versions."""
    lines = ["", "Ordering-check sources, mean normalised score: the source, its 8-px mosaic, the source + GAN "
             "texture at levels 1 … 5:", "", "| metric | source | source | 8-px mosaic | texture 1 | 2 | 3 | 4 | 5 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n, r in report["metrics"].items():
        mos, gan = r.get("mosaic_vs_source", {}), r.get("gan_vs_source", {})
        for src in dict.fromkeys(list(mos) + list(gan)):
            base = (mos.get(src) or gan.get(src))["source_mean"]
            m = f"{mos[src]['mosaic_mean']:.3f}" if src in mos else "–"
            t = [f"{v:.3f}" for v in gan[src]["texture_means"]] if src in gan else []
            t += ["–"] * (5 - len(t))
            lines.append(f"| {n} | {src} | {base:.3f} | {m} | " + " | ".join(t[:5]) + " |")
    return lines


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
    for label, key, pick in _CHECK_ROWS:
        cells = []
        for n in names:
            vals = [v["faces_ok"] for src, v in report["metrics"][n].get(key, {}).items() if pick(src)]
            cells.append(_share(float(np.mean(vals))) if vals else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| scoring time, whole bench (s) | " + " | ".join(
        f"{report['metrics'][n]['seconds_scoring']:.0f}" for n in names) + " |")
    lines += ["", "Mean normalised score per level (clean → level 1 … 5):", "",
              "| metric | distortion | clean | 1 | 2 | 3 | 4 | 5 |", "|---|---|---|---|---|---|---|---|"]
    for n in names:
        r = report["metrics"][n]
        for kind, k in r["kinds"].items():
            lines.append(f"| {n} | {kind} | {r['clean_mean']:.3f} | " + " | ".join(f"{m:.3f}" for m in k["means"]) + " |")
    lines += _source_table(report)
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
    print(json.dumps({n: {k: r[k] for k in ("all_kinds_pass", "mosaic_never_better", "gan_texture_never_better",
                                             "baseline_never_worse")} for n, r in report["metrics"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
