"""The fixed benchmark: ``python -m facerefine eval london-heldout --severities mild,medium,heavy`` (issue 14).

Faces: the 40 held-out London photos (20 identities x neutral + smiling, ``datasets.london_split``), aligned by
the crop step (embedded MTCNN by default, so every machine gets the same crops) at 512², kept as 8-bit images.
LQ: ``degrade.degrade_fixed`` with the documented severities of ``degrade.BENCHMARK_SEVERITIES``; each face's
noise is seeded by (seed, CRC32 of its file name), so ``--limit`` runs see the same LQ bytes as full runs.

Rows (``--rows``, comma-separated tokens):
    lq          the degraded input itself
    classical   OpenCV denoise + unsharp mask, parameters per severity from ``classical_params.json``
                (tuned once on TRAINING London faces by ``lab/eval/tune_classical.py``)
    v1, v2, v3  the restorers given by ``--v1`` / ``--v2`` / ``--v3`` (facerefine-compact / -compact-v2 /
                -compact-v3) at the restore command's defaults (``--quality`` 1, ``--fidelity`` 0.5); any other
                token is a restorer name or path
    MODEL@q0.5  the same restorer at quality 0.5;  MODEL@w1: at fidelity 1;  MODEL@q0w1: both
A restorer whose weights are absent is left out of the tables with a note (v3 rows appear once it ships).

Columns: PSNR and SSIM (RGB, whole 512² crop), NR-IQA (normalised 0..1, higher = better: face-iqa, the default
critic, then face-niqe and piqe), identity distance to the HQ face (dlib, and the independent FaceNet judge
where OpenCV can run it; lower = better), mean face-region colour error ΔE2000 to the HQ face, fine-detail
energy in the face over the HQ face's (``face_metrics.detail_ratio``: HQ = 1), mean absolute difference to the
LQ input over the face (grey levels) and seconds per face (one face per call, after one untimed warm-up call
per restorer).
Checks per model: the quality slider (0 vs 1, critic along 0 -> 0.5 -> 1), fidelity 1 vs the input, and the
five-fidelity check (0, 0.25, 0.5, 0.75, 1 differ pairwise; the change from the input falls as w rises).
Targets: issue 14's for v2 (``evaluate_targets``) and issue 25's (``evaluate_targets_v3``) for every model of
``--targets-for`` that ran, side by side.
Writes ``report.md``, ``results.json`` and ``grid_<severity>.png`` (HQ | LQ | classical | v1 | v2 | v3, 8 faces).
"""
from __future__ import annotations

import itertools
import json
import math
import re
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ...errors import FaceRefineError
from .face_metrics import (IdentityJudges, crop_landmarks, delta_e_face, detail_energy, detail_ratio, face_mad,
                           face_region_masks, to_u8)

FIDELITY_STEPS = (0.0, 0.25, 0.5, 0.75, 1.0)   # the five-fidelity check (issue 25's slider target)
DEFAULT_ROWS = ("lq,classical,v1,v2,v2@e0,v2@q0,v2@q0.5,v2@q1,v2@w0,v2@w0.25,v2@w0.5,v2@w0.75,v2@w1,"
                "v3,v3@q0,v3@q0.5,v3@q1,v3@w0,v3@w0.25,v3@w0.5,v3@w0.75,v3@w1")
GRID_COLUMNS = ("classical", "v1", "v2@e0", "v2", "v3")
MODEL_ALIASES = {"v1": "compact v1", "v2": "compact v2", "v3": "compact v3"}  # token -> label; the restorer is
                                                                             # BenchOptions.<token>


@dataclass
class BenchOptions:
    severities: tuple = ("mild", "medium", "heavy")
    rows: str = DEFAULT_ROWS
    v1: str = "facerefine-compact"
    v2: str = "facerefine-compact-v2"
    v3: str = "facerefine-compact-v3"
    targets_for: tuple = ("v2", "v3")   # models whose issue-25 targets are evaluated (those that ran)
    quality: float = 1.0                # the restore command's defaults ("defaults" rows)
    fidelity: float = 0.5
    lookup_mode: str = "auto"
    seed: int = 0
    limit: Optional[int] = None
    size: int = 512
    detector: str = "mtcnn"             # embedded: the same crops on every machine
    metrics: tuple = ("face-iqa", "face-niqe", "piqe")   # the first is the critic of the slider checks
    default_critic: bool = True         # add the registered default critic's column when it is another metric
    identity: bool = True
    device: str = "cpu"
    grid_faces: int = 8
    grid_tile: int = 256
    classical_params: Optional[str] = None
    london_root: Optional[str] = None


@dataclass(frozen=True)
class RowSpec:
    token: str
    kind: str                           # lq | classical | model
    label: str
    restorer: Optional[str] = None
    model: Optional[str] = None         # v1 / v2 / v3 / the name as given
    quality: Optional[float] = None
    fidelity: Optional[float] = None
    exemplar: Optional[float] = None    # exemplar detail (None: the lookup default)

    @property
    def key(self) -> tuple:
        return (self.kind, self.restorer, self.quality, self.fidelity, self.exemplar)


_TOKEN = re.compile(r"^(?P<model>[^@]+?)(?:@(?:q(?P<q>\d*\.?\d+))?(?:w(?P<w>\d*\.?\d+))?(?:e(?P<e>\d*\.?\d+))?)?$")


def model_restorer(model: str, opts: BenchOptions) -> tuple[str, str, str]:
    """(restorer, model key, label base) of a row's model part: the aliases v1/v2/v3 name the restorer of
    ``opts.v1`` / ``opts.v2`` / ``opts.v3``; any other name or path stands for itself."""
    low = model.lower()
    if low in MODEL_ALIASES:
        return getattr(opts, low), low, MODEL_ALIASES[low]
    return model, model, model


def parse_rows(spec: str, opts: BenchOptions) -> list[RowSpec]:
    rows = []
    for token in (t.strip() for t in str(spec).split(",")):
        if not token:
            continue
        low = token.lower()
        if low in ("lq", "input"):
            rows.append(RowSpec("lq", "lq", "LQ input"))
            continue
        if low == "classical":
            rows.append(RowSpec("classical", "classical", "classical (denoise + unsharp)"))
            continue
        m = _TOKEN.match(token)
        if m is None or (token.count("@") and m.group("q") is None and m.group("w") is None
                         and m.group("e") is None):
            raise FaceRefineError(f"row '{token}' not understood: use lq, classical, v1, v2, v3, a restorer "
                                  f"name, or MODEL@q0.5 / MODEL@w1 / MODEL@q0w1 / MODEL@e0 (exemplar detail)")
        restorer, model, base = model_restorer(m.group("model"), opts)
        q = float(m.group("q")) if m.group("q") is not None else None
        w = float(m.group("w")) if m.group("w") is not None else None
        e = float(m.group("e")) if m.group("e") is not None else None
        named = (("quality", q), ("fidelity", w), ("exemplar detail", e))
        for name, v in named:
            if v is not None and not 0.0 <= v <= 1.0:
                raise FaceRefineError(f"row '{token}': {name} must be within 0..1")
        if q is None and w is None and e is None:
            label = f"{base} (defaults)"
        else:
            label = base + "".join(f" {n} {v:g}" for n, v in named if v is not None)
        rows.append(RowSpec(token, "model", label, restorer, model, opts.quality if q is None else q,
                            opts.fidelity if w is None else w, e))
    if not rows:
        raise FaceRefineError("no rows to evaluate (--rows is empty)")
    return rows


# ------------------------------------------------------------------------------------------- faces

def heldout_photos(root: Optional[str] = None) -> list[Path]:
    """The held-out London photos, identity by identity: neutral then smiling (40 for the full set)."""
    from .. import datasets
    split = datasets.london_split(root)
    by_id: dict[str, list[Path]] = {}
    for key in ("heldout_neutral", "heldout_smiling"):
        for p in split[key]:
            by_id.setdefault(datasets.london_identity(p), []).append(p)
    photos = [p for ident in sorted(by_id) for p in by_id[ident]]
    if not photos:
        where = Path(root) if root else datasets.shared_data_dir() / "london"
        raise FaceRefineError(f"no held-out London photos under {where} (needs neutral/ and smiling/; "
                              f"set FACEREFINE_SHARED_DATA to the folder holding london/)")
    return photos


def face_key(path: Path) -> int:
    """A stable per-face key for the degradation seed (independent of order and --limit)."""
    return zlib.crc32(Path(path).name.encode())


def align_photos(paths: list[Path], size: int, detector: str, device: str = "cpu",
                 notes: Optional[list] = None) -> tuple[torch.Tensor, list, list[Path]]:
    """Each photo through the crop step (largest face) -> 8-bit HQ crops [N,3,S,S], FaceInfo list, kept paths."""
    from ...core.crop.options import CropOptions
    from ...core.crop.step import crop_faces
    from ...core.image_io import load_image
    options = CropOptions(detector=detector, crop_size=size, max_faces=1, sort="largest", device=device)
    crops, faces, kept = [], [], []
    for p in paths:
        image = load_image(p).image
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            found = crop_faces(image, options)
        if found.is_empty:
            if notes is not None:
                notes.append(f"{p.name}: no face found by the crop step ({detector}); left out")
            continue
        crops.append(found.crops[0].cpu())
        faces.append(found.faces[0])
        kept.append(p)
    if not crops:
        raise FaceRefineError("the crop step found no face in any benchmark photo")
    hq = (torch.stack(crops).float().clamp(0, 1) * 255).round() / 255  # 8-bit, as a saved crop
    return hq, faces, kept


def lq_faces(hq: torch.Tensor, severity: str, seed: int, paths: list[Path]) -> torch.Tensor:
    from ..degrade import degrade_fixed
    return degrade_fixed(hq, severity, seed=seed, keys=[face_key(p) for p in paths])


# ------------------------------------------------------------------------------------------- restoration

class Restorers:
    """Loads each restorer once; ``run`` restores one face per call and returns (outputs, seconds per face)."""

    def __init__(self, opts: BenchOptions, notes: list):
        self.opts, self.notes = opts, notes
        self._loaded: dict[str, object] = {}
        self._missing: dict[str, str] = {}
        self._warm: set = set()

    def get(self, name: str):
        if name in self._loaded:
            return self._loaded[name]
        if name in self._missing:
            return None
        from ...models.restorers import load_restorer
        try:
            self._loaded[name] = load_restorer(name, self.opts.device)
        except (FaceRefineError, OSError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            self._missing[name] = first
            self.notes.append(f"restorer '{name}' not available, its rows are left out: {first}")
            return None
        return self._loaded[name]

    def run(self, restorer, lq: torch.Tensor, faces: list, quality: float, fidelity: float,
            exemplar: Optional[float] = None) -> tuple:
        from ...core.lookup.lookup import lookup
        from ...core.lookup.options import LookupOptions
        from ...core.types import FaceCrops
        size = lq.shape[-1]

        def one(i: int) -> torch.Tensor:
            crops = FaceCrops(lq[i:i + 1], (faces[i],), size, history=("crop",))
            options = LookupOptions(quality=quality, fidelity=fidelity, mode=self.opts.lookup_mode,
                                    **({} if exemplar is None else {"exemplar_detail": exemplar}))
            out, _ = lookup(crops, restorer, options, keep_latent=False)
            return out.crops.float().cpu().clamp(0, 1)

        if id(restorer) not in self._warm:  # one-off costs (lazy critic loading, allocator) are not timed
            one(0)
            self._warm.add(id(restorer))
        outs, seconds = [], []
        for i in range(lq.shape[0]):
            t0 = time.perf_counter()
            outs.append(one(i))
            seconds.append(time.perf_counter() - t0)
        return torch.cat(outs), seconds


def run_classical(lq: torch.Tensor, params) -> tuple:
    from .classical import classical_restore
    outs, seconds = [], []
    for i in range(lq.shape[0]):
        t0 = time.perf_counter()
        outs.append(classical_restore(lq[i:i + 1], params))
        seconds.append(time.perf_counter() - t0)
    return torch.cat(outs), seconds


# ------------------------------------------------------------------------------------------- metrics

class Measures:
    """Per-face metrics of a batch of outputs against the HQ faces."""

    def __init__(self, opts: BenchOptions, hq: torch.Tensor, faces: list, notes: list):
        from .harness import psnr, ssim
        self.psnr, self.ssim = psnr, ssim
        self.hq, self.notes = hq, notes
        size = hq.shape[-1]
        self.landmarks = [crop_landmarks(f) for f in faces]
        self.masks = face_region_masks(self.landmarks, size)
        self.metrics = {}
        names = list(opts.metrics)
        if opts.default_critic:
            from ...core.score import default_metric
            crit = default_metric()
            if crit not in names:
                names.append(crit)
        from ...core.score import get_metric
        for name in names:
            try:
                self.metrics[name] = get_metric(name, opts.device)
            except (FaceRefineError, ImportError, OSError) as err:
                notes.append(f"NR-IQA '{name}' unavailable: {str(err).splitlines()[0]}")
        self.hq_detail = detail_energy(hq, self.masks)  # grey levels², the detail column's reference
        self.judges = IdentityJudges(hq, faces, notes) if opts.identity else None

    def nriqa(self, x: torch.Tensor) -> dict[str, list[float]]:
        out = {}
        for name, m in self.metrics.items():
            try:
                out[name] = [float(v) for v in m.normalized(x)]
            except Exception as err:  # noqa: BLE001 - one metric failing must not stop the benchmark
                self.notes.append(f"{name} failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
        return out

    def per_face(self, x: torch.Tensor, lq: torch.Tensor, with_ref: bool = True) -> dict[str, list[float]]:
        vals: dict[str, list[float]] = {}
        if with_ref:
            vals["psnr"] = [float(v) for v in self.psnr(x, self.hq)]
            vals["ssim"] = [float(v) for v in self.ssim(x, self.hq)]
        vals.update(self.nriqa(x))
        if with_ref:
            if self.judges is not None:
                vals.update(self.judges.distances(x))
            vals["delta_e"] = [float(v) for v in delta_e_face(x, self.hq, self.masks)]
            vals["detail"] = [float(v) for v in detail_ratio(x, self.hq, self.masks, self.hq_detail)]
            vals["mad_lq"] = [float(v) for v in face_mad(x, lq, self.masks)]
        return vals


def _mean(v: list) -> float:
    v = [a for a in v if a is not None and not math.isnan(a)]
    return float(sum(v) / len(v)) if v else float("nan")


# ------------------------------------------------------------------------------------------- the run

def _check_options(opts: BenchOptions) -> tuple[list[str], list[RowSpec], Optional[dict]]:
    """-> (severities, rows, classical parameters or None); raises FaceRefineError on a wrong option."""
    from ..degrade import fixed_severity
    from .classical import load_params
    try:
        severities = list(dict.fromkeys(fixed_severity(s).name for s in opts.severities))
    except ValueError as err:
        raise FaceRefineError(str(err)) from None
    if not severities:
        raise FaceRefineError("no severity given (--severities mild,medium,heavy)")
    rows = parse_rows(opts.rows, opts)
    if opts.size not in (256, 512, 1024):
        raise FaceRefineError(f"benchmark crop size must be 256, 512 or 1024, got {opts.size}")
    classical = None
    if any(r.kind == "classical" for r in rows):
        try:
            classical = load_params(opts.classical_params)
        except FileNotFoundError as err:
            raise FaceRefineError(str(err)) from err
    return severities, rows, classical


def _results_header(opts: BenchOptions, paths: list[Path], severities: list[str], classical) -> dict:
    from ..degrade import BENCHMARK_SEVERITIES
    return {"benchmark": "london-heldout", "faces": len(paths), "files_used": [p.name for p in paths],
            "size": opts.size, "seed": opts.seed, "detector": opts.detector, "lookup_mode": opts.lookup_mode,
            "defaults": {"quality": opts.quality, "fidelity": opts.fidelity},
            "torch_threads": torch.get_num_threads(), "device": opts.device,
            "severities": {s: BENCHMARK_SEVERITIES[s].to_dict() | {"description": BENCHMARK_SEVERITIES[s].describe()}
                           for s in severities},
            "classical_params": {s: classical[s].to_dict() | {"description": classical[s].describe()}
                                 for s in severities if s in classical} if classical else None,
            "rows": {}, "checks": {}, "files": {}}


@dataclass
class SeverityRun:
    """Runs and measures every row on one severity's LQ faces; rows with the same setting run once."""
    measures: Measures
    restorers: Restorers
    faces: list
    classical: Optional[dict]
    notes: list
    log: Callable[[str], None] = print

    def __call__(self, rows: list[RowSpec], severity: str, lq: torch.Tensor) -> tuple[list[dict], dict]:
        cache: dict[tuple, dict] = {}
        outputs: dict[str, torch.Tensor] = {}
        table = []
        for row in rows:
            if row.key in cache:  # e.g. v2 (defaults) == v2@q1 == v2@w0.5: run once
                table.append(dict(cache[row.key], row=row.token, label=row.label, model=row.model))
                outputs[row.token] = outputs[cache[row.key]["row"]]
                continue
            ran = self.output(row, severity, lq)
            if ran is None:
                continue
            x, secs = ran
            per_face = self.measures.per_face(x, lq)
            per_face["seconds"] = secs
            entry = {"row": row.token, "label": row.label, "kind": row.kind, "model": row.model,
                     "restorer": row.restorer, "quality": row.quality, "fidelity": row.fidelity,
                     "exemplar": row.exemplar,
                     "mean": {k: _mean(v) for k, v in per_face.items()}, "per_face": per_face}
            if row.kind == "model":
                entry["architecture"] = getattr(self.restorers.get(row.restorer), "architecture", None)
            cache[row.key] = entry
            table.append(entry)
            outputs[row.token] = (x * 255).round().byte()  # 8-bit: 40 faces x 20 rows stay small
        return table, outputs

    def output(self, row: RowSpec, severity: str, lq: torch.Tensor) -> Optional[tuple]:
        """(outputs, seconds per face) of one row, or None when it cannot run (noted)."""
        if row.kind == "lq":
            return lq, [0.0] * lq.shape[0]
        if row.kind == "classical":
            if severity not in self.classical:
                self.notes.append(f"classical: no tuned parameters for severity '{severity}'; row left out")
                return None
            return run_classical(lq, self.classical[severity])
        restorer = self.restorers.get(row.restorer)
        if restorer is None:
            return None
        self.log(f"  {row.label}")
        return self.restorers.run(restorer, lq, self.faces, row.quality, row.fidelity, row.exemplar)


def run_benchmark(out_dir: str | Path, opts: BenchOptions = BenchOptions(),
                  log: Callable[[str], None] = print) -> dict:
    from ..degrade import BENCHMARK_SEVERITIES
    severities, rows, classical = _check_options(opts)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    paths = heldout_photos(opts.london_root)
    if opts.limit:
        paths = paths[: max(1, int(opts.limit))]
    log(f"eval london-heldout: aligning {len(paths)} photos with the crop step ({opts.detector}, {opts.size}²)")
    hq, faces, paths = align_photos(paths, opts.size, opts.detector, opts.device, notes)
    measures = Measures(opts, hq, faces, notes)
    run_rows = SeverityRun(measures, Restorers(opts, notes), faces, classical, notes, log)
    n_grid = min(opts.grid_faces, len(paths))
    results = _results_header(opts, paths, severities, classical)
    hq_row = {k: _mean(v) for k, v in measures.per_face(hq, hq, with_ref=False).items()} | {"detail": 1.0}
    for sev in severities:
        log(f"eval london-heldout: severity {sev} ({BENCHMARK_SEVERITIES[sev].describe()})")
        lq = lq_faces(hq, sev, opts.seed, paths)
        table, outputs = run_rows(rows, sev, lq)
        results["rows"][sev] = table
        results["checks"][sev] = slider_checks(rows, outputs, lq, measures.masks, table, opts.quality,
                                               opts.fidelity)
        grid = write_grid(out / f"grid_{sev}.png", hq[:n_grid], lq[:n_grid],
                          {c: outputs[c][:n_grid] for c in GRID_COLUMNS if c in outputs}, opts.grid_tile)
        results["files"][f"grid_{sev}"] = str(grid)
    results["hq"] = hq_row
    results["targets"] = evaluate_targets(results)
    models = dict.fromkeys(model_restorer(m, opts)[1] for m in opts.targets_for)
    results["targets_issue25"] = [t for m in models for t in evaluate_targets_v3(results, m)]
    results["notes"] = list(dict.fromkeys(notes))
    (out / "report.md").write_text(markdown_report(results))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    results["files"].update(report=str(out / "report.md"), results=str(out / "results.json"))
    return results


def slider_checks(rows: list[RowSpec], outputs: dict, lq: torch.Tensor, masks: torch.Tensor, table: list,
                  quality: float, fidelity: float) -> dict:
    """Per model: quality 0 vs 1 over the face and face-niqe along the quality slider (at the default fidelity),
    how close fidelity 1 (at the default quality) stays to the input, and the five-fidelity check
    (``fidelity_check``) when all of ``FIDELITY_STEPS`` ran at the default quality."""
    checks = {}
    means = {e["row"]: e["mean"] for e in table}
    for model in dict.fromkeys(r.model for r in rows if r.kind == "model"):
        toks = {(r.quality, r.fidelity): r.token for r in rows if r.model == model and r.token in outputs}
        c = {}
        q0, q1 = toks.get((0.0, fidelity)), toks.get((1.0, fidelity))
        if q0 and q1:
            c["quality_0_vs_1_grey_levels"] = _mean(face_mad(outputs[q0].float() / 255, outputs[q1].float() / 255,
                                                             masks).tolist())
        critic = next((k for k in ("face-iqa", "face-niqe") if any(k in means.get(t, {}) for t in toks.values())),
                      None)
        qs = sorted((q, means[t][critic]) for (q, w), t in toks.items()
                    if critic and w == fidelity and critic in means.get(t, {}))
        if len(qs) >= 3:
            vals = [v for _, v in qs]
            c["slider_critic"] = critic
            c["critic_over_quality"] = qs
            c["critic_rises_with_quality"] = all(b >= a for a, b in zip(vals, vals[1:]))
        w1 = toks.get((quality, 1.0))
        if w1:
            c["fidelity_1_vs_input_grey_levels"] = means[w1]["mad_lq"]
        if all((quality, w) in toks for w in FIDELITY_STEPS):
            c.update(fidelity_check({w: outputs[toks[(quality, w)]] for w in FIDELITY_STEPS}, lq, masks))
        if c:
            checks[model] = c
    return checks


def _as_unit(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


def fidelity_check(outputs: dict, lq: torch.Tensor, masks: torch.Tensor, min_diff: float = 0.05) -> dict:
    """The five-fidelity check of one model: ``outputs`` {fidelity: faces [N,3,S,S] (uint8 or 0..1)}.

    Passes when every pair of outputs differs by more than ``min_diff`` grey levels over the face (mean over
    faces of ``face_mad``) and the mean change from the LQ input over the face falls strictly as w rises.
    """
    ws = sorted(outputs)
    change = [_mean(face_mad(_as_unit(outputs[w]), _as_unit(lq), masks).tolist()) for w in ws]
    pairs = {(a, b): _mean(face_mad(_as_unit(outputs[a]), _as_unit(outputs[b]), masks).tolist())
             for a, b in itertools.combinations(ws, 2)}
    closest = min(pairs, key=pairs.get) if pairs else None
    distinct = bool(pairs) and pairs[closest] > min_diff
    falls = len(ws) > 1 and all(b < a for a, b in zip(change, change[1:]))
    return {"fidelity_steps": ws, "fidelity_change_from_input": change,
            "fidelity_min_pairwise_grey_levels": pairs[closest] if pairs else None,
            "fidelity_closest_pair": list(closest) if closest else None,
            "fidelity_distinct": distinct, "fidelity_change_falls": falls, "fidelity_check": distinct and falls}


def defaults_entry(table: list[dict], model: str, defaults: dict) -> Optional[dict]:
    """The means of ``model``'s row at the restore defaults (e.g. 'v2', or 'v2@q1' when only that ran)."""
    for e in table:
        if e.get("model", e["row"]) == model and e.get("quality") == defaults["quality"] \
                and e.get("fidelity") == defaults["fidelity"]:
            return e["mean"]
    return None


def _row_means(table: list[dict], token: str) -> Optional[dict]:
    return next((e["mean"] for e in table if e["row"] == token), None)


def evaluate_targets(results: dict, model: str = "v2") -> list[dict]:
    """The issue-14 targets for ``model`` (defaults), where the rows they need were measured."""
    out = []
    margins = {"mild": 1.0, "medium": 1.0, "heavy": 0.3}
    for sev, table in results["rows"].items():
        v2, lq = defaults_entry(table, model, results["defaults"]), _row_means(table, "lq")
        cl = _row_means(table, "classical")
        if v2 is None or lq is None:
            continue

        def add(name, value, ok):
            out.append({"severity": sev, "model": model, "target": name, "value": value, "pass": bool(ok)})
        add(f"PSNR >= LQ + {margins.get(sev, 0.3)} dB", v2["psnr"] - lq["psnr"],
            v2["psnr"] - lq["psnr"] >= margins.get(sev, 0.3))
        add("SSIM >= LQ + 0.02", v2["ssim"] - lq["ssim"], v2["ssim"] - lq["ssim"] >= 0.02)
        if cl is not None:
            add("PSNR > classical", v2["psnr"] - cl["psnr"], v2["psnr"] > cl["psnr"])
            add("SSIM > classical", v2["ssim"] - cl["ssim"], v2["ssim"] > cl["ssim"])
        if "identity" in v2 and "identity" in lq:
            add("identity distance <= LQ", v2["identity"] - lq["identity"], v2["identity"] <= lq["identity"])
        add("ΔE <= LQ + 0.5", v2["delta_e"] - lq["delta_e"], v2["delta_e"] <= lq["delta_e"] + 0.5)
        chk = results["checks"].get(sev, {}).get(model, {})
        if "face-iqa" in v2 and "face-iqa" in lq:
            add("face-iqa (default critic) >= LQ", v2["face-iqa"] - lq["face-iqa"], v2["face-iqa"] >= lq["face-iqa"])
        if sev == "medium" and "critic_rises_with_quality" in chk:
            add(f"{chk['slider_critic']} (normalised) rises monotonically over quality 0 -> 0.5 -> 1", None,
                chk["critic_rises_with_quality"])
        if sev == "medium" and "quality_0_vs_1_grey_levels" in chk:
            v = chk["quality_0_vs_1_grey_levels"]
            add("quality 0 vs 1 differ >= 1.5 grey levels (face)", v, v >= 1.5)
        if "fidelity_1_vs_input_grey_levels" in chk:
            v = chk["fidelity_1_vs_input_grey_levels"]
            add("fidelity 1 returns the input (<= 0.5 grey levels, face)", v, v <= 0.5)
    return out


# Issue 25's targets at the restore defaults (the held-out family's is in generalisation.py; speed in bench)
V3_TARGETS = {"heavy": {"psnr_gain": 0.8, "delta_e_over_lq": 0.5, "face-iqa": 0.6, "detail": 0.5,
                        "identity_vs_lq": 0.95},
              "medium": {"psnr_gain": 1.5, "ssim_gain": 0.03, "quality_0_vs_1": 3.0}}


def evaluate_targets_v3(results: dict, model: str = "v3") -> list[dict]:
    """Issue 25's targets for ``model`` at defaults, where the rows they need were measured: heavy (PSNR, ΔE,
    face-iqa, detail, identity by dlib and FaceNet against the LQ's), medium (PSNR, SSIM) and the sliders at
    medium (quality 0 vs 1, the five-fidelity check). Entries: severity, model, target, value, signed, pass."""
    out = []
    for sev, table in results["rows"].items():
        m, lq = defaults_entry(table, model, results["defaults"]), _row_means(table, "lq")
        t = V3_TARGETS.get(sev)
        if m is None or lq is None or t is None:
            continue

        def add(name, value, ok, signed=False):
            out.append({"severity": sev, "model": model, "target": name, "value": value, "signed": signed,
                        "pass": bool(ok)})
        gain = m["psnr"] - lq["psnr"]
        add(f"PSNR >= LQ + {t['psnr_gain']:g} dB", gain, gain >= t["psnr_gain"], True)
        if sev == "heavy":
            d = m["delta_e"] - lq["delta_e"]
            add(f"ΔE <= LQ + {t['delta_e_over_lq']:g}", d, d <= t["delta_e_over_lq"], True)
            for key, name in (("face-iqa", "face-iqa"), ("detail", "detail (HQ = 1)")):
                if key in m:
                    add(f"{name} >= {t[key]:g}", m[key], m[key] >= t[key])
            for key, judge in (("identity", "dlib"), ("id_facenet", "FaceNet")):
                if key in m and key in lq:
                    r = m[key] / max(lq[key], 1e-12)
                    add(f"identity distance ({judge}) <= {t['identity_vs_lq']:g} × LQ's", r,
                        r <= t["identity_vs_lq"])
        if sev == "medium":
            d = m["ssim"] - lq["ssim"]
            add(f"SSIM >= LQ + {t['ssim_gain']:g}", d, d >= t["ssim_gain"], True)
            out += [dict(e, severity=sev, model=model)
                    for e in _slider_targets(results["checks"].get(sev, {}).get(model, {}), t)]
    return out


def _slider_targets(chk: dict, t: dict) -> list[dict]:
    out = []
    if "quality_0_vs_1_grey_levels" in chk:
        v = chk["quality_0_vs_1_grey_levels"]
        out.append({"target": f"quality 0 vs 1 differ >= {t['quality_0_vs_1']:g} grey levels (face)", "value": v,
                    "signed": False, "pass": v >= t["quality_0_vs_1"]})
    if "fidelity_check" in chk:
        out.append({"target": "fidelity 0, 0.25, 0.5, 0.75, 1: five different outputs (closest pair, grey levels "
                              "over the face, > 0.05)", "value": chk["fidelity_min_pairwise_grey_levels"],
                    "signed": False, "pass": chk["fidelity_distinct"]})
        out.append({"target": "fidelity: the change from the input falls monotonically as w rises", "value": None,
                    "signed": False, "pass": chk["fidelity_change_falls"]})
    return out


# ------------------------------------------------------------------------------------------- outputs

COLUMNS = (("psnr", "PSNR dB ↑", "{:.2f}"), ("ssim", "SSIM ↑", "{:.4f}"), ("face-iqa", "face-iqa ↑", "{:.3f}"),
           ("face-niqe", "face-niqe ↑", "{:.3f}"), ("piqe", "piqe ↑", "{:.3f}"),
           ("identity", "ID dist (dlib) ↓", "{:.3f}"), ("id_facenet", "ID dist (FaceNet) ↓", "{:.3f}"),
           ("delta_e", "ΔE00 face ↓", "{:.2f}"), ("detail", "detail (HQ = 1)", "{:.3f}"),
           ("mad_lq", "Δ to LQ (grey, face)", "{:.2f}"), ("seconds", "s / face", "{:.3f}"))
NR_IQA_COLUMNS = 5  # the first five of COLUMNS; other NR-IQA metrics (the default critic) follow them


def _columns(rows: list[dict]) -> list[tuple]:
    keys = list(dict.fromkeys(k for r in rows for k in r["mean"]))
    head = [c for c in COLUMNS[:NR_IQA_COLUMNS] if c[0] in keys]
    tail = [c for c in COLUMNS[NR_IQA_COLUMNS:] if c[0] in keys]
    extra = [(k, f"{k} ↑", "{:.3f}") for k in keys if k not in {c[0] for c in COLUMNS}]
    return head + extra + tail


def _cell(fmt: str, means: dict, key: str) -> str:
    v = means.get(key)
    return "–" if v is None or math.isnan(v) else fmt.format(v)


def _check_lines(model: str, c: dict) -> list[str]:
    """One line of a model's slider checks (``slider_checks``) below a severity's table."""
    bits = []
    if "quality_0_vs_1_grey_levels" in c:
        bits.append(f"quality 0 vs 1 differ by {c['quality_0_vs_1_grey_levels']:.2f} grey levels over the face")
    if "critic_over_quality" in c:
        bits.append(f"{c['slider_critic']} over quality " +
                    " → ".join(f"{q:g}: {v:.3f}" for q, v in c["critic_over_quality"]) +
                    (" (rises monotonically)" if c["critic_rises_with_quality"] else " (does not rise monotonically)"))
    if "fidelity_1_vs_input_grey_levels" in c:
        bits.append(f"fidelity 1 is {c['fidelity_1_vs_input_grey_levels']:.2f} grey levels from the input")
    if "fidelity_check" in c:
        bits.append("change from the input over fidelity " +
                    " → ".join(f"{w:g}: {v:.2f}" for w, v in zip(c["fidelity_steps"], c["fidelity_change_from_input"]))
                    + (" (falls monotonically)" if c["fidelity_change_falls"] else " (does not fall monotonically)") +
                    f", closest pair {' vs '.join(f'{w:g}' for w in c['fidelity_closest_pair'])} differs by "
                    f"{c['fidelity_min_pairwise_grey_levels']:.2f} grey levels" +
                    ("" if c["fidelity_distinct"] else " (not five different outputs)"))
    return ["", f"{MODEL_ALIASES.get(model, model)}: " + "; ".join(bits) + "."] if bits else []


def _severity_section(res: dict, sev: str, table: list[dict]) -> list[str]:
    lines = [f"## {sev}: {res['severities'][sev]['description']}", ""]
    cols = _columns(table)
    lines.append("| row | " + " | ".join(c[1] for c in cols) + " |")
    lines.append("|---|" + "---|" * len(cols))
    for e in table:
        lines.append(f"| {e['label']} | " + " | ".join(_cell(c[2], e["mean"], c[0]) for c in cols) + " |")
    if res.get("hq"):
        lines.append("| HQ (reference) | " + " | ".join(_cell(c[2], res["hq"], c[0]) for c in cols) + " |")
    for model, c in res["checks"].get(sev, {}).items():
        lines += _check_lines(model, c)
    if f"grid_{sev}" in res["files"]:
        shown = ["HQ", "LQ"] + [c for c in GRID_COLUMNS if any(e["row"] == c for e in table)]
        lines += ["", f"Grid: `{Path(res['files'][f'grid_{sev}']).name}` ({' | '.join(shown)})."]
    return lines + [""]


def _targets_v3_section(targets: list[dict]) -> list[str]:
    """Issue 25's targets, one column per model (value and pass/fail), one row per severity and target."""
    models = list(dict.fromkeys(t["model"] for t in targets))
    cells: dict[tuple, dict[str, str]] = {}
    for t in targets:
        v = "–" if t["value"] is None else (f"{t['value']:+.3f}" if t.get("signed") else f"{t['value']:.3f}")
        cells.setdefault((t["severity"], t["target"]), {})[t["model"]] = \
            f"{v} {'yes' if t['pass'] else '**no**'}"
    lines = ["## Issue-25 targets (at defaults)", "",
             "| severity | target | " + " | ".join(MODEL_ALIASES.get(m, m) for m in models) + " |",
             "|---|---|" + "---|" * len(models)]
    for (sev, target), by_model in cells.items():
        lines.append(f"| {sev} | {target} | " + " | ".join(by_model.get(m, "–") for m in models) + " |")
    return lines + ["", "Identity rows give the model's distance over the LQ's (both to the HQ face). The held-out "
                        "degradation family's target (PSNR ≥ LQ + 0.5 dB) is measured by "
                        "`python -m facerefine.lab.eval.generalisation`, the speed target by `bench`.", ""]


def markdown_report(res: dict) -> str:
    lines = ["# FaceRefine benchmark: london-heldout", "",
             f"{res['faces']} held-out London faces (identities never trained on), aligned by the crop step "
             f"({res['detector']}) at {res['size']}², seed {res['seed']}, lookup mode `{res['lookup_mode']}`, "
             f"defaults quality {res['defaults']['quality']:g} / fidelity {res['defaults']['fidelity']:g}, "
             f"{res['device']} with {res['torch_threads']} torch threads.",
             "NR-IQA columns are normalised (0..1, higher = better). ID dist: distance to the HQ face, by dlib's "
             "128-d descriptor (same-person threshold 0.6) and by the independent FaceNet judge (unit embeddings, "
             "threshold ~1.1). ΔE00: mean CIEDE2000 to the HQ face inside the face oval (both low-passed, sigma "
             "2 px at 512). detail: fine-detail energy in the face (grey image minus its Gaussian blur, sigma "
             "1.5 px at 512; mean squared residual over the face oval) over the HQ face's. Δ to LQ: mean absolute "
             "difference to the input over the face.",
             ""]
    if res.get("classical_params"):
        lines.append("Classical baseline (tuned on training London faces, `lab/eval/classical_params.json`): " +
                     "; ".join(f"{s}: {p['description']}" for s, p in res["classical_params"].items()) + ".")
        lines.append("")
    for sev, table in res["rows"].items():
        lines += _severity_section(res, sev, table)
    if res.get("targets"):
        lines += ["## Issue-14 targets (compact v2 at defaults)", "", "| severity | target | value | pass |",
                  "|---|---|---|---|"]
        for t in res["targets"]:
            v = "–" if t["value"] is None else f"{t['value']:+.3f}"
            lines.append(f"| {t['severity']} | {t['target']} | {v} | {'yes' if t['pass'] else '**no**'} |")
        lines += ["", "Speed target (≤ 0.3× the bare CodeFormer forward) is measured by `bench`, not here.", ""]
    if res.get("targets_issue25"):
        lines += _targets_v3_section(res["targets_issue25"])
    if res.get("notes"):
        lines += ["Notes:"] + [f"- {n}" for n in res["notes"]] + [""]
    return "\n".join(lines)


def write_grid(path: Path, hq: torch.Tensor, lq: torch.Tensor, columns: dict, tile: int) -> Path:
    """Rows of faces: HQ | LQ | each available column, labelled, tiles of ``tile`` px."""
    from PIL import Image, ImageDraw
    names = ["HQ", "LQ"] + [MODEL_ALIASES.get(k, k) for k in columns]
    cols = [to_u8(hq), to_u8(lq)] + [c.permute(0, 2, 3, 1).cpu().numpy() for c in columns.values()]
    n, pad, head = hq.shape[0], 4, 22
    canvas = Image.new("RGB", (len(cols) * (tile + pad) + pad, head + n * (tile + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for j, name in enumerate(names):
        draw.text((pad + j * (tile + pad) + 4, 5), name, fill=(0, 0, 0))
    for i in range(n):
        for j, col in enumerate(cols):
            img = Image.fromarray(np.ascontiguousarray(col[i])).resize((tile, tile), Image.LANCZOS)
            canvas.paste(img, (pad + j * (tile + pad), head + pad + i * (tile + pad)))
    canvas.save(path)
    return path


def options_dict(opts: BenchOptions) -> dict:
    return asdict(opts)
