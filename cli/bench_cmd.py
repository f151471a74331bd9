"""bench [--device cpu|cuda] [--batch 1,4,8] [--repeats N] [--tiny] [--compile]: per-stage timings and peak memory."""
from __future__ import annotations

import sys


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"batch sizes must be >= 1, got {text!r}")
    return values


def add_arguments(p) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--batch", default="", help="comma-separated batch sizes (default 1,4 on CPU; 1,4,8,16 on CUDA)")
    p.add_argument("--repeats", type=int, default=0, help="timed runs per figure; the median is reported "
                   "(default 2 on CPU, 10 on CUDA)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing (default 1)")
    p.add_argument("--tiny", action="store_true", help="tiny random models and small inputs (for CI; figures "
                   "mean nothing)")
    p.add_argument("--compile", action="store_true", help="torch.compile the restorer network first")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast dtype (auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--channels-last", dest="channels_last", action="store_true", default=None,
                   help="force the channels_last layout on the restorer (default: what load_restorer does, i.e. channels_last on CUDA only)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false", help="force NCHW")
    p.add_argument("--restorer", default=None, help="registry name or path of real weights (default: random "
                   "weights with the full-size CodeFormer shapes)")
    p.add_argument("--stages", default="", help="comma-separated subset of: lookup, detect_align_paste, score, "
                   "refine, memory, parity (default all)")
    p.add_argument("--refine-steps", type=int, default=None, help="refine steps (default: refine's default)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--steering", dest="steering", action="store_true", default=None,
                   help="also time lookup at its defaults (quality steering on); default on for CUDA and --tiny")
    p.add_argument("--no-steering", dest="steering", action="store_false")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run(args) -> dict:
    from ..lab.bench import ALL_STAGES, BenchOptions, run_bench
    from ..errors import FaceRefineError

    try:
        batches = _int_list(args.batch) if args.batch else ()
    except ValueError as err:
        raise FaceRefineError(f"--batch: {err}") from None
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    unknown = [s for s in stages if s not in ALL_STAGES]
    if unknown:
        raise FaceRefineError(f"--stages: unknown {unknown}; choose from {list(ALL_STAGES)}")
    if args.repeats < 0 or args.warmup < 0:
        raise FaceRefineError("--repeats and --warmup must be >= 0")
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    opts = BenchOptions(device=args.device, batches=batches, repeats=args.repeats, warmup=args.warmup,
                        tiny=args.tiny, compile=args.compile, dtype=args.dtype, channels_last=args.channels_last,
                        restorer=args.restorer, stages=stages, refine_steps=args.refine_steps,
                        threads=args.threads, steering=args.steering, log=log)
    report = run_bench(opts)
    if not args.json:
        print(format_report(report))
    return report


def format_report(report: dict) -> str:
    lines = [f"device {report['device']}  dtype {report['options']['dtype']}  load {report['load']}"]
    bare = report.get("bare", {})
    for b, row in bare.get("batch", {}).items():
        lines.append(f"bare forward   batch {b:>2}: {row['per_face_s'] * 1e3:9.1f} ms/face  {row['faces_per_s']:.3f} faces/s")
    for name, stage in report.get("stages", {}).items():
        if stage.get("status") != "ok":
            lines.append(f"{name:<22} {stage.get('status')}: {stage.get('reason', '')}")
            continue
        for key, value in stage.get("summary", {}).items():
            lines.append(f"{name:<22} {key}: {value}")
    for t in report.get("targets", []):
        mark = {True: "MET", False: "MISSED", None: "n/a"}[t["met"]]
        lines.append(f"target {t['name']}: {t['value']} (limit {t['limit']}) {mark}")
    return "\n".join(lines)
