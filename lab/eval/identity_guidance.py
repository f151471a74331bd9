"""Does identity guidance keep or restore a person's identity? Measured with a judge that is not the guide.

    python -m facerefine.lab.eval.identity_guidance --out runs/identity_eval [--limit N] [--severities medium,heavy]

Faces: the held-out London identities (``heldout.heldout_photos``): the neutral photo is the HQ face, the
same person's smiling photo is the reference. Both are aligned by the crop step (embedded MTCNN, 512²).
LQ: ``degrade.degrade_fixed`` at each severity (the benchmark's seeded presets).
Restorer: the embedded default (registry ``EMBEDDED_RESTORER``, now ``facerefine-compact-v2``) with its paired
latent prior and, for the dlib guide, its paired Identity Recovery Network; guide: the identity
network the refine step loads (``--id-model``, default dlib's embedded ResNet); judge: FaceNet
(``facenet_judge``), which guidance never sees.

Rows: no refine; refine with identity strength 0 (prior only); strength 0.5 / 1 / 2 towards the LQ face;
with the Identity Recovery Network (when one is trained for this restorer and guide); with the reference
photo (strength 1 and 2). Columns: judge distance to the HQ face (lower = better), guide cosine similarity to
the HQ face, PSNR, SSIM, face-niqe, seconds per face (whole row, and the refine step alone).
Writes ``report.md``, ``results.json`` and ``grid_<severity>.jpg`` (HQ | LQ | no refine | reference rows).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch


@dataclass(frozen=True)
class Row:
    label: str
    refine: bool = False
    identity_strength: float = 0.0
    target: str = "lq"          # lq | recovery | reference
    reference_detail: float = 0.0  # the reference photo's fine detail (core/refine/reference_detail.py)
    steps: Optional[int] = None    # refine steps (None = the run's; 0 = reference detail only)


ROWS = (Row("no refine"),
        Row("refine, identity 0 (prior only)", True, 0.0),
        Row("refine, identity 0.5 → LQ face", True, 0.5),
        Row("refine, identity 1 → LQ face", True, 1.0),
        Row("refine, identity 2 → LQ face", True, 2.0),
        Row("refine, identity 1 → IRN", True, 1.0, "recovery"),
        Row("refine, identity 1 → reference photo", True, 1.0, "reference"),
        Row("refine, identity 2 → reference photo", True, 2.0, "reference"),
        Row("refine, identity 0.5 → IRN", True, 0.5, "recovery"),
        Row("refine, identity 0.5 → reference photo", True, 0.5, "reference"),
        Row("reference detail only (no refine steps)", True, 0.0, "reference", 1.0, 0),
        Row("refine, identity 1 → reference photo + reference detail", True, 1.0, "reference", 1.0),
        Row("refine, identity 0.5 → reference photo + reference detail (the defaults)", True, 0.5, "reference", 1.0))
GRID_ROWS = ("no refine", "refine, identity 1 → reference photo", "reference detail only (no refine steps)",
             "refine, identity 0.5 → reference photo + reference detail (the defaults)")


def _pairs(limit: Optional[int]):
    from .heldout import heldout_photos
    photos = heldout_photos()
    neutral = {p.stem.split("_")[0]: p for p in photos if p.parent.name == "neutral"}
    smiling = {p.stem.split("_")[0]: p for p in photos if p.parent.name == "smiling"}
    ids = sorted(set(neutral) & set(smiling))
    ids = ids[:limit] if limit else ids
    return [neutral[i] for i in ids], [smiling[i] for i in ids]


def run(out_dir: Path, severities=("medium", "heavy"), limit: Optional[int] = None, steps: int = 8,
        restorer_name: Optional[str] = None, id_model_name: str = "dlib", irn: Optional[str] = None,
        seed: int = 0, log=print, rows=ROWS, guidance_steps: Optional[int] = None,
        identity_views: Optional[int] = None) -> dict:
    from ...core.lookup.lookup import lookup
    from ...core.lookup.options import LookupOptions
    from ...models.restorers import load_restorer
    from ...core.crop.landmarks import crop_landmarks
    from ...core.refine.options import DEFAULT_GUIDANCE_STEPS, DEFAULT_IDENTITY_VIEWS, RefineOptions
    from ...core.refine.reference import ReferenceFace
    from ...core.refine.refine import RefineRun, refine_latent
    from ...core.refine.step import default_identity_recovery, load_prior
    from ...core.score import get_metric
    from ...core.types import FaceCrops
    from ...errors import FaceRefineError
    from ...models.arch.identity import load_id_model
    from .facenet_judge import FaceNetJudge, crop_boxes
    from .harness import psnr, ssim
    from .heldout import align_photos, lq_faces

    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    neutral, smiling = _pairs(limit)
    hq, faces, kept = align_photos(neutral, 512, "mtcnn", notes=notes)
    ref_imgs, ref_faces, ref_kept = align_photos(smiling, 512, "mtcnn", notes=notes)
    if [p.stem.split("_")[0] for p in kept] != [p.stem.split("_")[0] for p in ref_kept]:
        raise FaceRefineError("a neutral or smiling photo lost its face in the crop step; pairs do not match")
    n = len(kept)
    from ...models.registry import EMBEDDED_RESTORER
    restorer_name = restorer_name or EMBEDDED_RESTORER
    restorer = load_restorer(restorer_name, "cpu")
    prior = load_prior(None, "cpu", restorer.architecture, restorer.name, notes)
    if irn is None:  # the IRN shipped for this restorer and guide, as the refine step picks it
        from ...models.arch.identity import resolve_id_model
        irn = default_identity_recovery(restorer.name, resolve_id_model(id_model_name))
    elif str(irn).lower() == "none":
        irn = None
    guide = load_id_model(id_model_name, "cpu", irn)
    judge = FaceNetJudge()
    niqe = get_metric("face-niqe", "cpu")
    boxes = crop_boxes(faces, 512)
    landmarks = torch.from_numpy(crop_landmarks(FaceCrops(hq, tuple(faces), 512))).float()
    hq_judge = judge.embed(hq, boxes)
    with torch.no_grad():
        hq_guide = guide.embed(hq, landmarks)
    if guide.recovery is None:
        notes.append(f"no Identity Recovery Network is trained for {restorer_name} with the {guide.network} "
                     f"guide (issue 15 item 3), so the IRN row is not run")

    # is the judge a judge? each HQ neutral face vs every smiling photo: same person should be nearest
    ref_boxes = crop_boxes(ref_faces, 512)
    ref_landmarks = torch.from_numpy(crop_landmarks(FaceCrops(ref_imgs, tuple(ref_faces), 512))).float()
    with torch.no_grad():
        ref_guide = guide.embed(ref_imgs, ref_landmarks)
    checks = {}
    for name, a, b in (("judge", hq_judge, judge.embed(ref_imgs, ref_boxes)),
                       ("guide", hq_guide.numpy().astype(np.float64), ref_guide.numpy().astype(np.float64))):
        d = np.linalg.norm(a[:, None] - b[None], axis=-1)
        off = ~np.eye(n, dtype=bool)
        checks[name] = {"same_person_distance": float(np.diag(d).mean()),
                        "other_person_distance": float(d[off].mean()) if n > 1 else float("nan"),
                        "rank1_identification": float(np.mean(d.argmin(1) == np.arange(n)))}
    result = {"faces": n, "restorer": restorer_name, "identity_check": checks, "prior": prior is not None, "guide": guide.network, "irn": irn,
              "judge": judge.name, "refine_steps": steps, "guidance_steps": guidance_steps or DEFAULT_GUIDANCE_STEPS,
              "identity_views": identity_views or DEFAULT_IDENTITY_VIEWS, "seed": seed, "severities": {}, "notes": notes}
    for sev in severities:
        lq = lq_faces(hq, sev, seed, kept)
        lq_entry = {"row": "LQ input", "judge_distance": float(judge.distance(judge.embed(lq, boxes), hq_judge).mean()),
                    "psnr": float(psnr(lq, hq).mean()), "ssim": float(ssim(lq, hq).mean())}
        table, outputs = [lq_entry], {}
        for row in rows:
            if row.target == "recovery" and guide.recovery is None:
                table.append({"row": row.label, "skipped": True})
                continue
            log(f"identity eval: {sev}: {row.label}")
            outs, secs, ref_secs = [], [], []
            for i in range(n):
                crops = FaceCrops(lq[i:i + 1], (faces[i],), 512, history=("crop",))
                t0 = time.perf_counter()
                restored, latent = lookup(crops, restorer, LookupOptions(quality=1.0, fidelity=0.5), keep_latent=True)
                t1 = time.perf_counter()
                if row.refine:
                    reference = (ReferenceFace.from_crops(FaceCrops(ref_imgs[i:i + 1], (ref_faces[i],), 512,
                                                                    history=("crop",)), 512)
                                 if row.target == "reference" else None)
                    use_guide = row.identity_strength or (reference is not None and row.reference_detail)
                    run = RefineRun(restorer, prior, guide if use_guide else None, reference, seed=seed + i)
                    options = RefineOptions(steps=steps if row.steps is None else row.steps,
                                            identity_strength=row.identity_strength,
                                            reference_detail=row.reference_detail, target=row.target,
                                            guidance_steps=guidance_steps, identity_views=identity_views)
                    res = refine_latent(restored, latent, run, options, lq[i:i + 1])
                    restored = res.crops
                t2 = time.perf_counter()
                outs.append(restored.crops.float().cpu().clamp(0, 1))
                secs.append(t2 - t0)
                ref_secs.append(t2 - t1)
            x = torch.cat(outs)
            x = (x * 255).round() / 255  # as saved
            outputs[row.label] = x
            with torch.no_grad():
                g = guide.embed(x, landmarks)
            per_face = judge.distance(judge.embed(x, boxes), hq_judge)
            entry = {"row": row.label,
                     "judge_distance": float(per_face.mean()),
                     "judge_distance_per_face": [round(float(d), 5) for d in per_face],
                     "guide_similarity": float((g * hq_guide).sum(1).mean()),
                     "psnr": float(psnr(x, hq).mean()), "ssim": float(ssim(x, hq).mean()),
                     "face_niqe": float(niqe.normalized(x).float().mean()),
                     "seconds_per_face": float(np.mean(secs)),
                     "refine_seconds_per_face": float(np.mean(ref_secs)) if row.refine else 0.0}
            table.append(entry)
            log(json.dumps(entry))
            result["severities"][sev] = table  # partial results survive an interrupted run
            (out_dir / "results.json").write_text(json.dumps(result, indent=2))
            (out_dir / "report.md").write_text(markdown(result))
        result["severities"][sev] = table
        grid = write_grid(out_dir / f"grid_{sev}.jpg", hq, lq, ref_imgs, {k: outputs[k] for k in GRID_ROWS
                                                                          if k in outputs})
        result.setdefault("files", {})[f"grid_{sev}"] = str(grid)
    (out_dir / "results.json").write_text(json.dumps(result, indent=2))
    (out_dir / "report.md").write_text(markdown(result))
    return result


def markdown(res: dict) -> str:
    lines = [f"{res['faces']} held-out London identities (neutral = HQ, smiling = reference photo), 512², "
             f"restorer `{res['restorer']}` (latent prior: {'yes' if res['prior'] else 'no'}), "
             f"{res['refine_steps']} refine steps ({res.get('guidance_steps', 1)} fresh identity gradient(s), "
             f"{res.get('identity_views', 1)} view(s) each), "
             f"guide: {res['guide']}, IRN: {res.get('irn') or 'none'}, judge: {res['judge']}.", ""]
    for name, c in res.get("identity_check", {}).items():
        lines.append(f"- {name}: neutral HQ vs smiling photo of the same person {c['same_person_distance']:.3f}, "
                     f"of the other people {c['other_person_distance']:.3f} (unit-vector distance); rank-1 "
                     f"identification {100 * c['rank1_identification']:.0f} %")
    lines.append("")
    for sev, table in res["severities"].items():
        base = next((r for r in table if r["row"] == "no refine"), None)
        lines += [f"**{sev}**", "",
                  "| row | judge dist ↓ | vs no refine [95 % interval] | guide sim ↑ | PSNR | SSIM | face-niqe | s/face | refine s/face |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in table:
            if r.get("skipped"):
                lines.append(f"| {r['row']} | n/a | | | | | | | |")
                continue
            rel = ""
            if base and r is not base and r["row"] != "LQ input":
                rel = f"{100 * (r['judge_distance'] / base['judge_distance'] - 1):+.1f} %"
                low, high = paired_interval(r.get("judge_distance_per_face"), base.get("judge_distance_per_face"))
                if low is not None:
                    rel += f" [{100 * low / base['judge_distance']:+.1f}, {100 * high / base['judge_distance']:+.1f}]"

            def f(key, fmt):
                v = r.get(key)
                return fmt.format(v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else "–"
            lines.append(f"| {r['row']} | {f('judge_distance', '{:.4f}')} | {rel} | {f('guide_similarity', '{:.4f}')} "
                         f"| {f('psnr', '{:.2f}')} | {f('ssim', '{:.4f}')} | {f('face_niqe', '{:.3f}')} "
                         f"| {f('seconds_per_face', '{:.2f}')} | {f('refine_seconds_per_face', '{:.2f}')} |")
        lines.append("")
    if res["notes"]:
        lines += ["Notes:"] + [f"- {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


def paired_interval(rows, base, z: float = 1.96):
    """95 % interval of the mean per-face change (row - no refine), normal approximation; (None, None)
    without per-face numbers."""
    if not rows or not base or len(rows) != len(base) or len(rows) < 3:
        return None, None
    d = np.asarray(rows, np.float64) - np.asarray(base, np.float64)
    half = z * d.std(ddof=1) / np.sqrt(len(d))
    return float(d.mean() - half), float(d.mean() + half)


def write_grid(path: Path, hq, lq, refs, columns: dict, faces: int = 6, tile: int = 192) -> Path:
    import cv2
    import torch.nn.functional as F
    cols = [hq, lq] + list(columns.values()) + [refs]
    rows = []
    for i in range(min(faces, hq.shape[0])):
        tiles = [F.interpolate(c[i:i + 1].float(), size=(tile, tile), mode="bicubic", antialias=True).clamp(0, 1)
                 for c in cols]
        rows.append(torch.cat(tiles, dim=3))
    img = (torch.cat(rows, dim=2)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/identity_eval")
    ap.add_argument("--severities", default="medium,heavy")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--restorer", default=None, help="default: the embedded default restorer")
    ap.add_argument("--id-model", default="dlib")
    ap.add_argument("--identity-recovery", default=None,
                    help="IRN file or registry name; default: the one shipped for the restorer and guide; none = off")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--guidance-steps", type=int, default=None,
                    help="fresh identity gradients per refine (default: the refine step's; = --steps for every step)")
    ap.add_argument("--identity-views", type=int, default=None,
                    help="augmented views per identity gradient (default: the refine step's)")
    ap.add_argument("--rows", default=None, help="comma-separated row numbers (0-based) of ROWS to run")
    args = ap.parse_args(argv)
    rows = ROWS if not args.rows else tuple(ROWS[int(i)] for i in args.rows.split(","))
    torch.set_num_threads(1)
    res = run(Path(args.out), tuple(s.strip() for s in args.severities.split(",") if s.strip()), args.limit,
              args.steps, args.restorer, args.id_model, args.identity_recovery, args.seed, rows=rows,
              guidance_steps=args.guidance_steps, identity_views=args.identity_views)
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
