"""``python -m facerefine train STAGE --config FILE``: train one stage (resumes from its checkpoint).

STAGE: vqgan (1), lookup (2), prior (3), identity (4), or ``export`` to pack a finished run into one
fp16 safetensors file for the registry. ``compact-v2`` trains the default restorer in one run
(configs/compact_v2.json; ``compact-v2-export`` packs its EMA weights).
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("stage", help="vqgan|lookup|prior|identity (or 1-4), export, compact-v2, compact-v2-export")
    parser.add_argument("--config", default=None,
                        help="JSON config (e.g. configs/compact.json; compact-v2 default: configs/compact_v2.json)")
    parser.add_argument("--steps", type=int, default=None, help="train until this total step count")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    parser.add_argument("--device", default=None, help="cpu|cuda (default: cuda when available)")
    parser.add_argument("--out-dir", default=None, help="run folder (default: the config's out_dir)")
    parser.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--output", default=None, help="export: destination file (default: config export.file)")


def run(args) -> dict:
    import torch

    if args.stage in ("compact-v2", "compact-v2-export"):
        return _compact_v2(args)
    from ..lab.train.runner import load_config, train_stage
    if not args.config:
        raise SystemExit("train: --config is required for this stage")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    if args.stage == "export":
        from ..lab.train.export import export_run
        return export_run(cfg, out_dir=args.out_dir, output=args.output)
    summary = train_stage(args.stage, cfg, steps=args.steps, device=args.device, out_dir=args.out_dir,
                          resume=not args.fresh, max_minutes=args.max_minutes)
    summary.pop("history", None)
    return summary


def _compact_v2(args) -> dict:
    from pathlib import Path

    from ..lab.train import compact_v2 as train_v2
    config = args.config or str(Path(__file__).resolve().parents[1] / "configs" / "compact_v2.json")
    cfg = train_v2.V2TrainConfig.load(config, steps=args.steps, out_dir=args.out_dir, max_minutes=args.max_minutes,
                                      threads=args.threads)
    if args.stage == "compact-v2-export":
        return {"exported": str(train_v2.export(cfg, args.output))}
    if args.fresh:
        (Path(cfg.out_dir) / "checkpoint.pt").unlink(missing_ok=True)
    summary = train_v2.train(cfg, log=lambda m: print(m, flush=True))
    summary.pop("history_tail", None)
    return summary
