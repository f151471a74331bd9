"""Measuring: interleaved timing, peak memory, FLOPs and the machine description.

Method (see docs/performance.md):
- every callable gets ``warmup`` untimed calls, then ``repeats`` timed calls; we report the median;
- the bare forward and the pipeline stage it is compared with run interleaved (A B A B ...), so a change of
  load on a shared machine hits both sides of a ratio alike;
- CUDA work is synchronised before the clock stops; CPU peak memory is the kernel's peak RSS (VmHWM) reset
  before each call (falls back to polling RSS with psutil), GPU peak is ``torch.cuda.max_memory_allocated``;
- FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on the first warm-up call.
"""
from __future__ import annotations

import contextlib
import gc
import os
import platform
import re
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch


# Spec sheet peak for dense bf16 matrix work (no sparsity), used for the roofline figure.
GPU_BF16_PEAK_TFLOPS = {"H100": 790.0, "H200": 790.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.0}


def loadavg() -> Optional[list[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _read_status_kb(field_name: str) -> Optional[int]:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field_name}:\s+(\d+)\s+kB", text, re.M)
    return int(m.group(1)) * 1024 if m else None


def current_rss() -> int:
    rss = _read_status_kb("VmRSS")
    if rss is not None:
        return rss
    import psutil
    return int(psutil.Process().memory_info().rss)


def _reset_peak_rss() -> bool:
    """Linux >= 4.0: writing 5 to clear_refs resets VmHWM to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _read_status_kb("VmHWM") is not None
    except OSError:
        return False


class _RssSampler:
    """Fallback peak-RSS probe: poll RSS every millisecond in a thread."""

    def __init__(self) -> None:
        import psutil
        self._proc = psutil.Process()
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(0.001)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


class PeakMemory:
    """Peak memory above the level at entry: CPU RSS or CUDA allocated bytes."""

    def __init__(self, device: torch.device):
        self.device = device
        self.baseline = 0
        self.peak = 0
        self.method = ""
        self._sampler: Optional[_RssSampler] = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            return self
        # Garbage freed inside the block would lower RSS under the baseline and hide the peak.
        gc.collect()
        if _reset_peak_rss():
            self.baseline = current_rss()
            self.method = "VmHWM (peak RSS, reset via /proc/self/clear_refs)"
        else:
            self._sampler = _RssSampler().__enter__()
            self.baseline = self._sampler.peak
            self.method = "psutil RSS polled every 1 ms"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self._sampler is not None:
            self._sampler.__exit__(*exc)
            self.peak = self._sampler.peak
        else:
            self.peak = _read_status_kb("VmHWM") or current_rss()

    @property
    def increment(self) -> int:
        return max(0, self.peak - self.baseline)


@dataclass
class Measurement:
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)   # process CPU seconds (all threads)
    peak_increment: int = 0
    baseline: int = 0
    flops: Optional[int] = None
    memory_method: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    def summary(self, items: int = 1, unit: str = "face") -> dict:
        med = self.median
        out = {"median_s": round(med, 6), "min_s": round(min(self.times), 6) if self.times else None,
               "max_s": round(max(self.times), 6) if self.times else None, "repeats": len(self.times),
               f"per_{unit}_s": round(med / max(items, 1), 6),
               f"{unit}s_per_s": round(items / med, 4) if med > 0 else None,
               "cpu_s_median": round(statistics.median(self.cpu_times), 6) if self.cpu_times else None,
               "peak_increment_bytes": self.peak_increment}
        if self.flops is not None:
            out["gflop"] = round(self.flops / 1e9, 3)
            out[f"gflop_per_{unit}"] = round(self.flops / 1e9 / max(items, 1), 3)
            out["achieved_tflops"] = round(self.flops / med / 1e12, 4) if med > 0 else None
        return out


def measure_interleaved(fns: dict[str, Callable[[], object]], device: torch.device, warmup: int, repeats: int,
                        count_flops: bool = False, log: Optional[Callable[[str], None]] = None
                        ) -> dict[str, Measurement]:
    """Warm up every callable, then time them round-robin; the peak memory is the max over timed calls."""
    from torch.utils.flop_counter import FlopCounterMode

    results = {name: Measurement() for name in fns}
    count_in_timed = count_flops and warmup == 0   # expensive callables: count during the one timed run
    for name, fn in fns.items():
        for i in range(warmup):
            if count_flops and i == 0:
                counter = FlopCounterMode(display=False)
                with counter:
                    fn()
                results[name].flops = int(counter.get_total_flops())
            else:
                fn()
        synchronize(device)
    for r in range(repeats):
        for name, fn in fns.items():
            counter = FlopCounterMode(display=False) if (count_in_timed and r == 0) else contextlib.nullcontext()
            with PeakMemory(device) as mem, counter:
                synchronize(device)
                cpu_start, start = time.process_time(), time.perf_counter()
                fn()
                synchronize(device)
                elapsed = time.perf_counter() - start
                cpu_elapsed = time.process_time() - cpu_start
            if count_in_timed and r == 0:
                results[name].flops = int(counter.get_total_flops())
            m = results[name]
            m.times.append(elapsed)
            m.cpu_times.append(cpu_elapsed)
            m.peak_increment = max(m.peak_increment, mem.increment)
            m.baseline = mem.baseline
            m.memory_method = mem.method
            if log:
                log(f"  {name}: run {r + 1}/{repeats} {elapsed:.3f}s")
    return results


def module_bytes(*modules) -> int:
    seen: set[int] = set()
    total = 0
    for module in modules:
        if module is None or not hasattr(module, "parameters"):
            continue
        for t in list(module.parameters()) + list(module.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total


def machine_info(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine()}
    try:
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_bytes=props.total_memory,
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
        peak = next((v for k, v in GPU_BF16_PEAK_TFLOPS.items() if k in props.name), None)
        info["gpu_bf16_peak_tflops"] = peak
    return info


