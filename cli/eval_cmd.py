"""``python -m facerefine eval HQ_DIR|LQ_DIR``: metrics table, comparison grid and plots.

HQ_DIR: aligned (or London-style with landmarks sidecars) HQ faces; seeded synthetic LQ is made
from them. ``--lq-only``: the folder holds real degraded faces, so only NR-IQA is reported.
``london-heldout`` is the fixed benchmark (issue 14): the 40 held-out London photos aligned by the crop step
at 512², degraded with the seeded mild/medium/heavy presets (``--severities``), rows LQ / classical / compact
v1 / compact v2 / compact v3 and their slider settings (``--rows``), issue 14's and issue 25's targets
(``--targets-for``); see lab/eval/heldout.py. ``london-heldout --ablations``
runs the older ablation harness on the held-out neutral faces (smiling = reference photo).
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    from ..core import controls  # ranges, choices and help of the restore controls
    parser.add_argument("folder", help="HQ folder, LQ folder (--lq-only) or 'london-heldout'")
    parser.add_argument("-o", "--out", default="runs/eval", help="output folder (report.md, grid.png, plots)")
    parser.add_argument("--restorer", default="facerefine-compact", help="registry name or weights path")
    parser.add_argument("--lq-only", action="store_true", help="the folder holds real LQ faces: NR-IQA only")
    parser.add_argument("--size", type=int, default=None, help="evaluation crop size (default: restorer's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="use the first N faces")
    parser.add_argument("--metrics", default="face-niqe,piqe", help="comma-separated NR-IQA metrics")
    controls.add_argument(parser, "fidelity")
    parser.add_argument("--refine-steps", type=int, default=10)
    parser.add_argument("--refine-strength", type=float, default=0.3)
    parser.add_argument("--identity-strength", type=float, default=1.0)
    parser.add_argument("--latent-prior", default=None, help="latent prior name/path (default: registry default)")
    parser.add_argument("--references", default=None,
                        help="folder of reference photos with the same file names, or 'london-smiling'")
    parser.add_argument("--device", default="cpu")
    g = parser.add_argument_group("london-heldout benchmark")
    g.add_argument("--severities", default="mild,medium,heavy", help="comma-separated: mild, medium, heavy")
    g.add_argument("--rows", default=None,
                   help="comma-separated rows (default: lq, classical, v1, and v2 and v3 each at defaults, quality "
                        "0/0.5/1 and fidelity 0/0.25/0.5/0.75/1): lq, classical, v1, v2, v3, any restorer name/path, "
                        "MODEL@q0.5 (quality), MODEL@w1 (fidelity), MODEL@q0w1 (both)")
    g.add_argument("--v1", default="facerefine-compact", help="restorer of the v1 rows")
    g.add_argument("--v2", default="facerefine-compact-v2", help="restorer of the v2 rows")
    g.add_argument("--v3", default="facerefine-compact-v3", help="restorer of the v3 rows (left out until it exists)")
    g.add_argument("--targets-for", default="v2,v3",
                   help="comma-separated models (row tokens) whose issue-25 targets are evaluated side by side")
    controls.add_argument(g, "quality", help="quality of the 'defaults' rows (restore default)")
    controls.add_argument(g, "lookup_mode")
    g.add_argument("--detector", default="mtcnn", help="crop-step detector for the HQ photos (embedded mtcnn)")
    g.add_argument("--no-identity", action="store_true", help="skip the identity distances (dlib, FaceNet)")
    g.add_argument("--classical-params", default=None, help="tuned classical parameters (lab/eval/classical_params.json)")
    g.add_argument("--grid-faces", type=int, default=8)
    g.add_argument("--ablations", action="store_true",
                   help="london-heldout: the older ablation harness (refine, reference photos) instead of the benchmark")


def run_benchmark(args) -> dict:
    from ..lab.eval.heldout import DEFAULT_ROWS, BenchOptions, run_benchmark as run_bench
    opts = BenchOptions(severities=tuple(s.strip() for s in args.severities.split(",") if s.strip()),
                        rows=args.rows or DEFAULT_ROWS, v1=args.v1, v2=args.v2, v3=args.v3,
                        targets_for=tuple(m.strip() for m in args.targets_for.split(",") if m.strip()),
                        quality=args.quality,
                        fidelity=args.fidelity, lookup_mode=args.lookup_mode, seed=args.seed, limit=args.limit,
                        size=args.size or 512, detector=args.detector,
                        metrics=tuple(m for m in args.metrics.split(",") if m), identity=not args.no_identity,
                        device=args.device, grid_faces=args.grid_faces, classical_params=args.classical_params)
    result = run_bench(args.out, opts, log=lambda m: None if args.json else print(m, flush=True))
    if not args.json:
        print(open(result["files"]["report"]).read())
    summary = {k: result[k] for k in ("benchmark", "faces", "size", "seed", "targets", "targets_issue25", "notes",
                                      "files")}
    summary["rows"] = {sev: [{"row": e["row"], "label": e["label"], **e["mean"]} for e in table]
                       for sev, table in result["rows"].items()}
    return summary


def run(args) -> dict:
    if args.folder == "london-heldout" and not args.ablations:
        return run_benchmark(args)
    from ..lab.eval.harness import EvalOptions, run_eval
    refs = args.references
    if refs is None and args.folder == "london-heldout":
        refs = "london-smiling"
    opts = EvalOptions(restorer=args.restorer, size=args.size, seed=args.seed, limit=args.limit,
                       lq_only=args.lq_only, metrics=tuple(m for m in args.metrics.split(",") if m),
                       fidelity=args.fidelity, refine_steps=args.refine_steps,
                       refine_strength=args.refine_strength, identity_strength=args.identity_strength,
                       latent_prior=args.latent_prior, references=refs, device=args.device)
    result = run_eval(args.folder, args.out, opts, log=lambda m: None if args.json else print(m))
    if not args.json:
        print(open(result["files"]["report"]).read())
    return {k: v for k, v in result.items() if k != "curves"}
