"""run_bench: every selected stage in one temporary workdir, then the issue's targets from the figures."""
from __future__ import annotations

import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import torch

from ...errors import FaceRefineError
from .measure import loadavg, machine_info, module_bytes
from .setup import ALL_STAGES, BenchContext, BenchOptions, StageUnavailable, nested_get, setup_restorer
from .stages import PARITY_MEAN_ABS_TOL, PARITY_PSNR_DB, STAGE_FUNCTIONS


def run_bench(opts: BenchOptions) -> dict:
    opts = opts.resolved()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = torch.device(opts.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FaceRefineError("--device cuda: no CUDA device is visible to torch; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise FaceRefineError(f"--device {opts.device}: only cpu and cuda are supported")
    if device.type == "cpu" and opts.dtype == "fp16":
        raise FaceRefineError("--dtype fp16 is for CUDA; use fp32 or bf16 on CPU")
    selected = [s for s in ALL_STAGES if not opts.stages or s in opts.stages]
    report: dict = {"ok": True, "device": str(device), "machine": machine_info(device),
                    "options": {k: v for k, v in asdict(opts).items() if k != "log"},
                    "load": {"before": loadavg()}, "stages": {}}
    log = opts.log or (lambda _m: None)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="facerefine-bench-") as tmp:
        ctx = BenchContext(opts, Path(tmp))
        try:
            setup = ctx.cached("restorer", lambda: setup_restorer(ctx))
        except StageUnavailable as err:
            raise FaceRefineError(str(err)) from None
        report["restorer"] = {"architecture": setup.architecture, "description": setup.description,
                              "parameters": setup.parameters, "input_size": setup.input_size,
                              "layout": setup.layout,
                              "weights_bytes": module_bytes(setup.bare_module),
                              }
        # the bare forward is the yardstick of every ratio: always measured (inside the lookup stage)
        for name in ["lookup"] + [s for s in selected if s != "lookup"]:
            fn = STAGE_FUNCTIONS[name]
            log(f"stage {name}")
            t0 = time.perf_counter()
            try:
                result = {"status": "ok", **fn(ctx, report)}
            except StageUnavailable as err:
                result = {"status": "unavailable", "reason": str(err)}
            except Exception as err:  # a broken stage must not hide the figures of the others
                result = {"status": "error", "reason": f"{type(err).__name__}: {err}",
                          "traceback": traceback.format_exc(limit=-3).splitlines()[-6:]}
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            result["stage_wall_s"] = round(time.perf_counter() - t0, 2)
            report["stages"][name] = result
    report["load"]["after"] = loadavg()
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["targets"] = evaluate_targets(report)
    return report


def evaluate_targets(report: dict) -> list[dict]:
    """The issue's targets, from this run's figures; met is None where this run cannot tell."""
    cuda = report["device"].startswith("cuda")
    stages = report["stages"]
    targets = []

    def add(name, value, limit, op, needs=None, note=""):
        met = None if value is None or (needs is not None and not needs) else (
            value <= limit if op == "<=" else value >= limit)
        targets.append({"name": name, "value": value, "limit": f"{op} {limit}", "met": met, "note": note})

    overhead = nested_get(stages, "lookup", "summary", "overhead_vs_bare_batch1")
    add("lookup-only overhead over bare forward, batch 1", overhead, 0.15, "<=")
    ratio_default = nested_get(stages, "lookup", "summary", "defaults_ratio_to_bare_batch1")
    add("CPU: lookup at defaults / bare forward, batch 1", ratio_default, 2.0, "<=", needs=not cuda,
        note="measured on CPU only")
    default_ratio = nested_get(stages, "default_model", "summary", "default_over_bare_batch1")
    add("CPU: embedded default restorer at defaults / bare CodeFormer forward, one 512^2 face", default_ratio, 0.3,
        "<=", needs=not cuda and report["options"].get("restorer") in (None, ""),
        note="yardstick: random full-size CodeFormer; measured on CPU")
    mem = nested_get(stages, "memory", "summary", "pipeline_over_bare_total")
    add("pipeline peak memory for one 512^2 face / bare forward peak", mem, 1.3, "<=")
    refine_ratio = nested_get(stages, "refine", "summary", "refine_over_lookup")
    add("refine at default steps / lookup (GPU)", refine_ratio, 1.0, "<=", needs=cuda,
        note="" if cuda else "CPU figure reported; the target is for GPU")
    refine_flops = nested_get(stages, "refine", "summary", "refine_over_lookup_flops")
    add("refine / lookup in FLOPs (a proxy for the GPU ratio)", refine_flops, 1.0, "<=",
        note="FLOPs, not time: meant to predict the GPU target where no GPU was measured")
    scale8 = nested_get(stages, "lookup", "summary", "lookup_faces_per_s_batch8_over_batch1")
    add("GPU: faces/s batch 8 / batch 1", scale8, 3.0, ">=", needs=cuda)
    tflops16 = nested_get(stages, "lookup", "steering_off", "16", "achieved_tflops")
    peak = report["machine"].get("gpu_bf16_peak_tflops")
    frac = round(tflops16 / peak, 4) if (tflops16 and peak) else None
    add("GPU: lookup achieved TFLOP/s at batch 16, bf16, fraction of peak", frac, 0.40, ">=",
        needs=cuda and report["options"]["dtype"] == "bf16")
    parity = nested_get(stages, "parity", "within_tolerance")
    targets.append({"name": "autocast output parity with fp32", "value": nested_get(stages, "parity", "summary"),
                    "limit": f"mean abs diff <= {PARITY_MEAN_ABS_TOL:.4f}, PSNR >= {PARITY_PSNR_DB} dB",
                    "met": parity, "note": ""})
    return targets


