"""Evaluation harness behind ``python -m facerefine eval``.

HQ folder: aligned HQ faces -> seeded synthetic LQ (lab.degrade) -> restore with each ablation ->
PSNR / SSIM against HQ, NR-IQA (offline metrics), identity similarity (ArcFace, when its weights are
present) and the lookup's code accuracy (predicted codes vs the codes of the HQ face).
LQ-only folder: NR-IQA of the input and of each restoration.
Writes ``report.md`` (markdown table), ``results.json``, ``grid.png`` (LQ / ours / HQ) and plots
(metric vs quality slider, metric vs identity strength).

Ablations (one run): base lookup (quality 0), + quality slider (quality 1), + identity refine,
+ reference photo (a second photo of the same person, e.g. London smiling for neutral).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import FaceRefineError
from ...core.types import FaceCrops, FaceInfo


@dataclass
class EvalOptions:
    restorer: str = "facerefine-compact"
    size: Optional[int] = None                 # evaluation crop size (default: the restorer's own size)
    seed: int = 0
    limit: Optional[int] = None
    lq_only: bool = False                      # the folder holds real LQ faces: NR-IQA only
    metrics: tuple = ("face-niqe", "piqe")     # NR-IQA metrics (offline ones by default)
    qualities: tuple = (0.0, 0.25, 0.5, 0.75, 1.0)
    identity_strengths: tuple = (0.0, 0.5, 1.0, 2.0)
    fidelity: float = 0.5                      # CodeFormer-style w (restore default)
    refine_steps: int = 10
    refine_strength: float = 0.3
    identity_strength: float = 1.0
    latent_prior: Optional[str] = None         # None: registry default for the restorer
    references: Optional[str] = None           # folder of reference photos ("london-smiling" for London)
    device: str = "cpu"
    grid_faces: int = 6
    degrade: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- data

def aligned_crops(images: torch.Tensor) -> FaceCrops:
    """FaceCrops for already-aligned faces (identity geometry)."""
    n, _, s, _ = images.shape
    eye = np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32)
    lm = np.array([[0.377, 0.469], [0.623, 0.469], [0.5, 0.613], [0.393, 0.725], [0.611, 0.725]]) * s
    faces = tuple(FaceInfo(eye, eye, lm, (0.0, 0.0, float(s), float(s)), 1.0, i, (s, s)) for i in range(n))
    return FaceCrops(images.float().clamp(0, 1), faces, s, history=("aligned",))


def load_faces(paths: list[Path], size: int) -> torch.Tensor:
    from ..train.data import align_face
    arr = np.stack([align_face(p, size) for p in paths])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255


def find_references(paths: list[Path], spec: Optional[str]) -> list[Optional[Path]]:
    """Reference photo of the same person for each face: London smiling for neutral, or the file with the
    same name in a reference folder."""
    if not spec:
        return [None] * len(paths)
    from .. import datasets
    out = []
    for p in paths:
        if spec == "london-smiling":
            ident = datasets.london_identity(p)
            hits = sorted((p.parent.parent / "smiling").glob(f"{ident}_*"))
            hits = [h for h in hits if h.suffix.lower() in datasets.IMAGE_SUFFIXES]
            out.append(hits[0] if hits else None)
        else:
            cand = Path(spec) / p.name
            out.append(cand if cand.is_file() else None)
    return out


# ------------------------------------------------------------------------------------------- metrics

def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = ((a - b) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from kornia.metrics import ssim as kssim
    win = 11 if min(a.shape[-2:]) >= 11 else 3
    return kssim(a, b, win).mean(dim=(1, 2, 3))


class Scorers:
    """NR-IQA metrics, ArcFace (optional) and notes on what was unavailable."""

    def __init__(self, names, device):
        self.notes: list[str] = []
        self.metrics = {}
        from ...core.score import get_metric
        for name in names:
            try:
                self.metrics[name] = get_metric(name, device)
            except (FaceRefineError, ImportError, OSError) as err:
                self.notes.append(f"NR-IQA '{name}' unavailable: {str(err).splitlines()[0]}")
        self.arcface = None
        try:
            from ...models.arch.identity import load_arcface
            self.arcface = load_arcface("arcface", device)
        except (FaceRefineError, ImportError, OSError) as err:
            self.notes.append(f"identity similarity skipped: ArcFace weights absent ({str(err).splitlines()[0]})")

    @torch.no_grad()
    def nriqa(self, x: torch.Tensor) -> dict[str, float]:
        out = {}
        for name, m in self.metrics.items():
            try:
                out[name] = float(m.normalized(x).float().mean())
            except Exception as err:  # noqa: BLE001 - a metric failing on tiny crops must not stop the eval
                self.notes.append(f"{name} failed on {tuple(x.shape)}: {err}")
        return out

    @torch.no_grad()
    def identity(self, x: torch.Tensor, hq: torch.Tensor) -> Optional[float]:
        if self.arcface is None:
            return None
        return float((self.arcface(x) * self.arcface(hq)).sum(1).mean())


def code_accuracy(restorer, latent, hq: torch.Tensor) -> Optional[float]:
    """Fraction of lookup codes equal to the HQ face's own codes (nearest codes of its encoder latent)."""
    model = getattr(restorer, "codebook", None)
    if model is None or latent is None or latent.indices is None:
        return None
    with torch.inference_mode():
        x = F.interpolate(hq, size=(restorer.img_size,) * 2, mode="bicubic", antialias=True).clamp(0, 1)
        z = model.encode((x * 2 - 1).to(restorer.device))[0]
        if hasattr(model, "quantize_hq"):  # IQPFR: both branches
            from ..train.iqpfr import quantize_dual
            target = quantize_dual(model, z)[-1]
        else:
            book = model.codebooks[0].float()
            flat = z.flatten(2).transpose(1, 2).float()
            target = torch.cdist(flat, book.unsqueeze(0).expand(flat.shape[0], -1, -1)).argmin(-1)
        pred = latent.indices.to(target.device)
        if pred.shape != target.shape:
            pred = pred[:, : target.shape[1]]
        return float((pred == target).float().mean())


# ------------------------------------------------------------------------------------------- runs

@dataclass
class Variant:
    name: str
    quality: float
    refine: bool = False
    identity_strength: float = 0.0
    reference: bool = False


def ablations(opts: EvalOptions) -> list[Variant]:
    return [Variant("base lookup (quality 0)", 0.0),
            Variant("+ quality slider (quality 1)", 1.0),
            Variant("+ identity refine", 1.0, True, opts.identity_strength),
            Variant("+ reference photo", 1.0, True, opts.identity_strength, True)]


class Runner:
    def __init__(self, opts: EvalOptions, log: Callable = print):
        from ...models.restorers import load_restorer
        self.opts, self.log = opts, log
        self.restorer = load_restorer(opts.restorer, opts.device)
        self.notes: list[str] = []
        self.prior = self.id_model = None
        self.refine_ready = False
        self._prepare_refine()

    def _prepare_refine(self) -> None:
        try:
            from ...core.refine.step import load_prior
            name = self.opts.latent_prior
            if name is None:  # a restorer trained here ships its own prior: "<restorer>-prior"
                from ...models.registry import get_spec
                name = f"{self.opts.restorer}-prior" if get_spec(f"{self.opts.restorer}-prior") else None
            self.prior = load_prior(name, self.opts.device, self.restorer.architecture, warnings=self.notes)
        except (FaceRefineError, ImportError) as err:
            self.notes.append(f"latent prior unavailable: {err}")
        try:
            from ...models.arch.identity import load_id_model
            self.id_model = load_id_model("arcface", device=self.opts.device)
        except (FaceRefineError, ImportError, OSError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            self.notes.append(f"identity guidance unavailable ({first}): the identity-refine row runs the latent "
                              f"prior only and the reference-photo row cannot run")
        self.refine_ready = self.prior is not None or self.id_model is not None

    def restore(self, lq: FaceCrops, v: Variant, reference_crops: Optional[list]) -> tuple[torch.Tensor, object]:
        from ...core.lookup.lookup import lookup
        from ...core.lookup.options import LookupOptions
        options = LookupOptions(quality=v.quality, fidelity=self.opts.fidelity, mode="auto")
        crops, latent = lookup(lq, self.restorer, options, keep_latent=True)
        if not v.refine:
            return crops.crops, latent
        if not self.refine_ready:
            return None, latent
        if v.reference and (self.id_model is None or reference_crops is None):
            return None, latent
        from ...core.refine.options import RefineOptions
        from ...core.refine.reference import ReferenceFace
        from ...core.refine.refine import RefineRun, refine, select_latent
        options = RefineOptions(steps=self.opts.refine_steps, strength=self.opts.refine_strength,
                                identity_strength=v.identity_strength)
        out = []
        for i in range(len(lq)):  # per face: each has its own reference photo
            ref = reference_crops[i] if v.reference else None
            if v.reference and ref is None:
                return None, latent
            run = RefineRun(self.restorer, self.prior, self.id_model if v.identity_strength > 0 else None,
                            None if ref is None else ReferenceFace.from_photo(ref, crops.crop_size),
                            seed=self.opts.seed + i)
            one = refine(crops.select([i]), select_latent(latent, [i]), run, options, lq.crops[i:i + 1])
            out.append(one.crops)
        return torch.cat(out), latent


def run_eval(folder: str | Path | list, out_dir: str | Path, opts: EvalOptions, log: Callable = print) -> dict:
    from ..degrade import DegradeConfig, degrade
    paths = folder if isinstance(folder, list) else _folder_images(folder)
    if opts.limit:
        paths = paths[: opts.limit]
    if not paths:
        raise FaceRefineError(f"no images in {folder}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(opts, log)
    size = int(opts.size or runner.restorer.img_size)
    scorers = Scorers(opts.metrics, opts.device)
    faces = load_faces(paths, size)
    if opts.lq_only:
        lq_images, hq = faces, None
    else:
        hq = faces
        lq_images, _ = degrade(hq, DegradeConfig.from_dict(opts.degrade), seed=opts.seed)
    lq = aligned_crops(lq_images)
    refs = None
    ref_paths = find_references(paths, opts.references)
    if any(ref_paths):
        refs = [aligned_crops(load_faces([p], size)) if p else None for p in ref_paths]

    def measure(x: torch.Tensor, latent=None) -> dict:
        row = dict(scorers.nriqa(x))
        if hq is not None:
            row["psnr"] = float(psnr(x, hq).mean())
            row["ssim"] = float(ssim(x, hq).mean())
            ident = scorers.identity(x, hq)
            if ident is not None:
                row["identity"] = ident
            acc = code_accuracy(runner.restorer, latent, hq) if latent is not None else None
            if acc is not None:
                row["code_acc"] = acc
        return row

    rows = [{"variant": "LQ input", **measure(lq_images)}]
    outputs, by_quality = {}, {}
    for v in ablations(opts):
        log(f"eval: {v.name}")
        x, latent = runner.restore(lq, v, refs)
        if x is None:
            rows.append({"variant": v.name, "skipped": True})
            continue
        x = _to_size(x, size)
        outputs[v.name] = x
        rows.append({"variant": v.name, **measure(x, latent)})
        if not v.refine:
            by_quality[v.quality] = rows[-1]
    if hq is not None:
        rows.append({"variant": "HQ (reference)", **measure(hq)})

    curves = {"quality": [], "identity_strength": []}
    for q in opts.qualities:
        if q in by_quality:  # already measured as an ablation row
            curves["quality"].append({"x": q, **{k: v for k, v in by_quality[q].items() if k != "variant"}})
            continue
        log(f"eval: quality {q}")
        x, latent = runner.restore(lq, Variant(f"q={q}", q), refs)
        curves["quality"].append({"x": q, **measure(_to_size(x, size), latent)})
    if runner.id_model is not None:
        for s in opts.identity_strengths:
            x, _ = runner.restore(lq, Variant(f"id={s}", 1.0, True, s), refs)
            if x is not None:
                curves["identity_strength"].append({"x": s, **measure(_to_size(x, size))})

    best = next((outputs[k] for k in reversed(list(outputs))), None)
    files = {"grid": str(write_grid(out / "grid.png", lq_images, best, hq, opts.grid_faces))}
    files.update(write_plots(out, curves))
    notes = sorted(set(runner.notes + scorers.notes))
    result = {"folder": str(folder) if not isinstance(folder, list) else f"{len(paths)} files",
              "faces": len(paths), "size": size, "restorer": opts.restorer,
              "architecture": runner.restorer.architecture, "seed": opts.seed, "lq_only": opts.lq_only,
              "degrade": DegradeConfig.from_dict(opts.degrade).to_dict(), "rows": rows, "curves": curves,
              "notes": notes, "files": files}
    (out / "report.md").write_text(markdown_report(result))
    (out / "results.json").write_text(json.dumps(result, indent=2))
    files["report"] = str(out / "report.md")
    files["results"] = str(out / "results.json")
    return result


def _folder_images(folder) -> list[Path]:
    from .. import datasets
    from ..train.data import resolve_sources
    if str(folder) == "london-heldout":
        return datasets.london_split()["heldout_neutral"]
    return resolve_sources([str(folder)], allow_heldout=True)


def _to_size(x: torch.Tensor, size: int) -> torch.Tensor:
    x = x.float().cpu()
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True)
    return x.clamp(0, 1)


# ------------------------------------------------------------------------------------------- outputs

COLUMNS = (("psnr", "PSNR dB ↑", "{:.2f}"), ("ssim", "SSIM ↑", "{:.4f}"), ("face-niqe", "face-niqe ↑", "{:.3f}"),
           ("piqe", "piqe ↑", "{:.3f}"), ("identity", "ArcFace sim ↑", "{:.3f}"), ("code_acc", "code acc ↑", "{:.3f}"))


def markdown_report(result: dict) -> str:
    rows = result["rows"]
    cols = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    cols += [(k, k, "{:.3f}") for r in rows for k in r
             if k not in {c[0] for c in COLUMNS} | {"variant", "skipped"}]
    seen, uniq = set(), []
    for c in cols:
        if c[0] not in seen:
            seen.add(c[0])
            uniq.append(c)
    lines = [f"Restorer `{result['restorer']}` ({result['architecture']}), {result['faces']} faces at "
             f"{result['size']}², seed {result['seed']}" + (" (LQ-only folder)" if result["lq_only"] else "") + ".",
             "NR-IQA columns are normalised scores (0..1, higher = better).", "",
             "| variant | " + " | ".join(c[1] for c in uniq) + " |",
             "|---|" + "---|" * len(uniq)]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['variant']} | " + " | ".join("n/a" for _ in uniq) + " |")
            continue
        lines.append(f"| {r['variant']} | " + " | ".join(c[2].format(r[c[0]]) if c[0] in r else "–" for c in uniq)
                     + " |")
    if result["notes"]:
        lines += ["", "Notes:"] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def write_grid(path: Path, lq: torch.Tensor, ours: Optional[torch.Tensor], hq: Optional[torch.Tensor],
               n: int) -> Path:
    from torchvision.utils import save_image
    cols = [lq[:n]] + ([ours[:n]] if ours is not None else []) + ([hq[:n]] if hq is not None else [])
    tiles = torch.stack(cols, dim=1).flatten(0, 1)  # row per face: LQ, ours, HQ
    save_image(tiles, str(path), nrow=len(cols), padding=2, pad_value=1.0)
    return path


def write_plots(out: Path, curves: dict) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    files = {}
    for key, label in (("quality", "quality slider"), ("identity_strength", "identity strength")):
        pts = curves.get(key) or []
        if not pts:
            continue
        metrics = [k for k in pts[0] if k != "x"]
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3), squeeze=False)
        for ax, m in zip(axes[0], metrics):
            ax.plot([p["x"] for p in pts], [p.get(m, math.nan) for p in pts], marker="o")
            ax.set_xlabel(label)
            ax.set_title(m)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        file = out / f"plot_{key}.png"
        fig.savefig(file, dpi=90)
        plt.close(fig)
        files[f"plot_{key}"] = str(file)
    return files
