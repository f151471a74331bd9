"""Benchmark harness: per-stage timings, faces/s, peak memory and FLOPs, each next to the bare forward.

measure.py (timing/memory/FLOPs), setup.py (options, context, inputs, restorer), stages.py (one function per
stage), run.py (run_bench and the targets). See docs/performance.md.
"""
from .measure import Measurement, PeakMemory, machine_info, measure_interleaved, module_bytes
from .run import evaluate_targets, run_bench
from .setup import ALL_STAGES, BenchOptions, StageUnavailable
from .stages import STAGE_FUNCTIONS

__all__ = ["ALL_STAGES", "BenchOptions", "Measurement", "PeakMemory", "STAGE_FUNCTIONS", "StageUnavailable",
           "evaluate_targets", "machine_info", "measure_interleaved", "module_bytes", "run_bench"]
