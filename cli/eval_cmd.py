"""``python -m facerefine eval HQ_DIR|LQ_DIR``: metrics table, comparison grid and plots.

HQ_DIR: aligned (or London-style with landmarks sidecars) HQ faces; seeded synthetic LQ is made
from them. ``--lq-only``: the folder holds real degraded faces, so only NR-IQA is reported.
``london-heldout`` evaluates on the held-out London identities (neutral; smiling = reference photo).
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("folder", help="HQ folder, LQ folder (--lq-only) or 'london-heldout'")
    parser.add_argument("-o", "--out", default="runs/eval", help="output folder (report.md, grid.png, plots)")
    parser.add_argument("--restorer", default="facerefine-compact", help="registry name or weights path")
    parser.add_argument("--lq-only", action="store_true", help="the folder holds real LQ faces: NR-IQA only")
    parser.add_argument("--size", type=int, default=None, help="evaluation crop size (default: restorer's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="use the first N faces")
    parser.add_argument("--metrics", default="face-niqe,piqe", help="comma-separated NR-IQA metrics")
    parser.add_argument("--fidelity", type=float, default=0.5)
    parser.add_argument("--refine-steps", type=int, default=10)
    parser.add_argument("--refine-strength", type=float, default=0.3)
    parser.add_argument("--identity-strength", type=float, default=1.0)
    parser.add_argument("--latent-prior", default=None, help="latent prior name/path (default: registry default)")
    parser.add_argument("--references", default=None,
                        help="folder of reference photos with the same file names, or 'london-smiling'")
    parser.add_argument("--device", default="cpu")


def run(args) -> dict:
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
