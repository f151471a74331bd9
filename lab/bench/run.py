"""Benchmark harness: per-stage timings, faces/s, peak memory and FLOPs, each next to the bare spandrel forward.

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
import os
import platform
import re
import statistics
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

# Spec sheet peak for dense bf16 matrix work (no sparsity), used for the roofline figure.
GPU_BF16_PEAK_TFLOPS = {"H100": 790.0, "H200": 790.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.0}

FULL_CROP = 512


class StageUnavailable(Exception):
    """A stage's module or weights are not there; reported, not fatal."""


@dataclass
class BenchOptions:
    device: str = "cpu"
    batches: tuple[int, ...] = ()          # empty: (1, 4) on CPU, (1, 4, 8, 16) on CUDA
    repeats: int = 0                       # 0: 2 on CPU, 10 on CUDA
    warmup: int = 1
    tiny: bool = False
    compile: bool = False
    dtype: str = "auto"                    # auto: bf16 autocast on CUDA, fp32 on CPU
    channels_last: Optional[bool] = None   # None: the layout load_restorer chose (channels_last on CUDA)
    restorer: Optional[str] = None         # name or path of real weights; default: random full-size CodeFormer
    stages: tuple[str, ...] = ()           # empty: all
    refine_steps: Optional[int] = None     # None: refine's default
    threads: Optional[int] = None
    steering: Optional[bool] = None        # time lookup at its defaults too; None: not on full-size CPU runs
    log: Optional[Callable[[str], None]] = None

    def resolved(self) -> "BenchOptions":
        cuda = self.device.startswith("cuda")
        batches = self.batches or ((1, 4, 8, 16) if cuda else (1, 4))
        if self.tiny and not self.batches:
            batches = (1, 4)
        repeats = self.repeats or (10 if cuda else (3 if self.tiny else 2))
        dtype = self.dtype if self.dtype != "auto" else ("bf16" if cuda else "fp32")
        cl = self.channels_last  # None: keep the layout load_restorer chose (channels_last on CUDA)
        steering = self.steering if self.steering is not None else (cuda or self.tiny)
        return BenchOptions(self.device, tuple(sorted(set(batches))), repeats, self.warmup, self.tiny,
                            self.compile, dtype, cl, self.restorer, self.stages, self.refine_steps,
                            self.threads, steering, self.log)


ALL_STAGES = ("lookup", "detect_align_paste", "score", "refine", "memory", "parity")


# ----------------------------------------------------------------------------------------------- measuring

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
        elif _reset_peak_rss():
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


# ----------------------------------------------------------------------------------------------- context

def autocast_dtype(opts: BenchOptions) -> Optional[torch.dtype]:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(opts.dtype)


@contextlib.contextmanager
def inference_context(device: torch.device, dtype: Optional[torch.dtype], inference: bool = True):
    """Autocast to ``dtype`` (None: none), under inference_mode unless ``inference`` is False (pipeline steps
    manage their own grad mode: steering and refine need autograd, which an outer inference_mode would kill)."""
    with torch.inference_mode() if inference else contextlib.nullcontext():
        if dtype is None:
            yield
        else:
            with torch.autocast(device_type=device.type, dtype=dtype):
                yield


class BenchContext:
    """Models and inputs shared by the stages of one bench run."""

    def __init__(self, opts: BenchOptions, workdir: Path):
        self.opts = opts
        self.device = torch.device(opts.device)
        self.dtype = autocast_dtype(opts)
        self.workdir = workdir
        self.log = opts.log or (lambda _msg: None)
        self._cache: dict[str, object] = {}

    def cached(self, key: str, build: Callable[[], object]):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def infer(self):
        return inference_context(self.device, self.dtype)

    def measure(self, fns: dict[str, Callable[[], object]], count_flops: bool = False,
                repeats: Optional[int] = None, warmup: Optional[int] = None) -> dict[str, Measurement]:
        """Autocast only: each callable sets its grad mode, as a user's call would."""
        warmup = self.opts.warmup if warmup is None else warmup
        if self.opts.compile and count_flops:
            warmup = max(warmup, 1) + 1  # the FLOP-counted call compiles under a dispatch mode: compile again
        with inference_context(self.device, self.dtype, inference=False):
            return measure_interleaved(fns, self.device, warmup,
                                       self.opts.repeats if repeats is None else repeats, count_flops, self.log)


# ----------------------------------------------------------------------------------------------- inputs

FFHQ_5_POINTS_512 = ((192.98, 239.95), (318.90, 240.19), (256.63, 314.02), (201.26, 371.41), (313.09, 371.15))


def synthetic_face_crops(n: int, size: int, seed: int = 0):
    """N smooth random crops with identity geometry (content does not change a network's cost)."""
    import numpy as np
    import torch.nn.functional as F
    from .types import FaceCrops, FaceInfo

    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, max(size // 32, 2), max(size // 32, 2), generator=gen)
    crops = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    eye = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    marks = np.array(FFHQ_5_POINTS_512) * size / 512
    faces = tuple(FaceInfo(affine=eye.copy(), inverse_affine=eye.copy(), landmarks=marks.copy(),
                           bbox=(0.0, 0.0, float(size), float(size)), score=1.0, image_index=i,
                           image_size=(size, size)) for i in range(n))
    return FaceCrops(crops, faces, size)


def london_faces(count: int) -> list[Path]:
    root = Path(os.environ.get("FACEREFINE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    files = sorted((root / "london" / "neutral").glob("*.jpg"))
    return files[:count]


def group_photo(size: int, faces: int = 3) -> tuple[torch.Tensor, str]:
    """A size x size [1,H,W,3] image with ``faces`` London portraits side by side, or a flat grey image
    when the shared data is absent (detection then finds nothing; say so in the report)."""
    import torch.nn.functional as F
    files = london_faces(faces)
    canvas = torch.full((3, size, size), 0.5)
    if len(files) < faces:
        return canvas.permute(1, 2, 0).unsqueeze(0).contiguous(), "synthetic grey (no ../shared/data/london)"
    from PIL import Image
    import numpy as np
    tile = size // faces
    for i, f in enumerate(files):
        img = torch.from_numpy(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0)
        img = F.interpolate(img.permute(2, 0, 1)[None], size=(tile, tile), mode="bilinear", antialias=True,
                            align_corners=False)[0]
        top = (size - tile) // 2 + (i - faces // 2) * tile // 8   # vary the height a little
        canvas[:, top:top + tile, i * tile:(i + 1) * tile] = img
    return canvas.permute(1, 2, 0).unsqueeze(0).contiguous(), f"{faces} London neutral portraits on grey"


# ----------------------------------------------------------------------------------------------- restorer

def full_codeformer_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with the shapes of the released codeformer.pth (94M parameters)."""
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer
    torch.manual_seed(seed)
    model = CodeFormer(dim_embd=512, n_head=8, n_layers=9, codebook_size=1024, latent_size=256,
                       connect_list=["32", "64", "128", "256"])
    with torch.no_grad():
        model.position_emb.normal_(0, 0.02)
    return model.state_dict()


def spandrel_descriptor(sd: dict):
    import spandrel
    import spandrel_extra_arches
    with contextlib.suppress(Exception):
        spandrel_extra_arches.install()
    return spandrel.ModelLoader().load_from_state_dict(sd)


def _tiny_models():
    import importlib
    import sys
    tests_dir = Path(__file__).resolve().parents[1] / "tests"
    if not (tests_dir / "tiny_models.py").is_file():
        raise StageUnavailable("--tiny needs tests/tiny_models.py (a source checkout)")
    if str(tests_dir) not in sys.path:
        sys.path.insert(0, str(tests_dir))
    return importlib.import_module("tiny_models")


@dataclass
class RestorerSetup:
    path: Optional[Path]
    architecture: str
    input_size: int
    description: str
    bare: Callable[[torch.Tensor], object]    # the bare forward on [N,3,S,S] in -1..1
    bare_module: torch.nn.Module
    handle: object = None                    # core.lookup Restorer, None when core.lookup is missing
    handle_error: str = ""
    parameters: int = 0
    layout: str = ""


def _compile_blocks(module: torch.nn.Module, log) -> int:
    """torch.compile the repeated blocks in place (CodeFormer-family names); both the bare forward and
    our lookup call these blocks, so both get the compiled code."""
    count = 0
    for name in ("encoder.blocks", "generator.blocks", "ft_layers"):
        parent = module
        for part in name.split("."):
            parent = getattr(parent, part, None)
            if parent is None:
                break
        if parent is None:
            continue
        for child in parent.children():
            child.compile(dynamic=False)
            count += 1
    log(f"torch.compile: {count} blocks")
    return count


def setup_restorer(ctx: BenchContext) -> RestorerSetup:
    opts, device = ctx.opts, ctx.device
    if opts.restorer:
        from ..models.locate import resolve
        path = Path(resolve(opts.restorer, "facerestore_models"))
        description = f"weights file {path.name}"
    elif opts.tiny:  # tiny CodeFormer keeps the full CNN (seconds per face): use our small IQPFR
        path = _tiny_models().make_tiny_iqpfr(ctx.workdir / "tiny-iqpfr.safetensors")
        description = "tiny IQPFR (tests/tiny_models.py, 64^2 input); bare = the module's own forward"
    else:
        from ..models.loading import save_safetensors
        path = save_safetensors(full_codeformer_state(), ctx.workdir / "codeformer-random-full.safetensors")
        description = "random weights, full-size CodeFormer shapes (as codeformer.pth)"

    handle, handle_error = None, ""
    try:
        from .lookup import load_restorer
        handle = load_restorer(str(path), device)
    except ImportError as err:
        handle_error = f"core.lookup not available: {err}"
    if handle is not None and hasattr(handle, "precision"):
        handle.precision = "fp32" if opts.dtype == "fp32" else "auto"
    module = _find_module(handle) if handle is not None else None
    descriptor = getattr(handle, "descriptor", None)
    if module is None:
        from ..models.arch.iqpfr import IQPFR
        from ..models.loading import load_state_dict
        sd = load_state_dict(path)
        if IQPFR.is_iqpfr_state_dict(sd):
            module = IQPFR.from_file(path, sd).to(device).eval()
            architecture = "IQPFR"
        else:
            descriptor = spandrel_descriptor(sd)
            descriptor.to(device).eval()
            module = descriptor.model
            architecture = descriptor.architecture.id
    else:
        architecture = getattr(handle, "architecture", None) or type(module).__name__
    input_size = int(getattr(handle, "img_size", 0) or getattr(getattr(module, "config", None), "img_size", 0)
                     or FULL_CROP)
    if opts.channels_last is not None:
        try:  # through the handle, so it knows its layout (and keeps GFPGAN NCHW)
            handle.to(device, channels_last=opts.channels_last)
        except (AttributeError, TypeError):
            module.to(memory_format=torch.channels_last if opts.channels_last else torch.contiguous_format)
    if opts.compile:
        _compile_blocks(module, ctx.log)

    if descriptor is not None and getattr(descriptor, "model", None) is module:
        bare = descriptor        # spandrel's own call: pad check, call_fn, range clamp
    else:
        def bare(x: torch.Tensor):
            out = module(x)
            return out[0] if isinstance(out, (tuple, list)) else out

    return RestorerSetup(path, architecture, input_size, description, bare, module, handle, handle_error,
                         sum(p.numel() for p in module.parameters()), _layout(module))


def _layout(module: torch.nn.Module) -> str:
    for p in module.parameters():
        if p.ndim == 4:
            return "channels_last" if p.is_contiguous(memory_format=torch.channels_last) and \
                not p.is_contiguous() else "contiguous (NCHW)"
    return "n/a"


def _find_module(handle) -> Optional[torch.nn.Module]:
    """The restorer network inside a core.lookup handle (shared, so the bare and the pipeline use one copy)."""
    for attr in ("model", "module", "net", "network", "descriptor"):
        obj = getattr(handle, attr, None)
        if isinstance(obj, torch.nn.Module):
            return obj
        inner = getattr(obj, "model", None)
        if isinstance(inner, torch.nn.Module):
            return inner
    return None


# ----------------------------------------------------------------------------------------------- stages

def _inference(fn, *args):
    with torch.inference_mode():
        return fn(*args)


def _lookup_fn():
    try:
        from .lookup import lookup
    except ImportError as err:
        raise StageUnavailable(f"core.lookup not available: {err}") from None
    return lookup


def stage_lookup(ctx: BenchContext, report: dict) -> dict:
    """Bare forward and lookup (steering off, then defaults) per batch size, interleaved."""
    import inspect
    setup: RestorerSetup = ctx.cached("restorer", lambda: setup_restorer(ctx))
    size = setup.input_size
    cl = torch.channels_last if setup.layout == "channels_last" else torch.contiguous_format
    lookup = None
    if setup.handle is not None:
        lookup = _lookup_fn()
    defaults = {}
    if lookup is not None:
        defaults = {k: p.default for k, p in inspect.signature(lookup).parameters.items()
                    if p.default is not inspect.Parameter.empty}
    bare_rows, off_rows, default_rows = {}, {}, {}
    flops_face = {}
    for b in ctx.opts.batches:
        crops = synthetic_face_crops(b, size, seed=b)
        crops = crops.__class__(crops.crops.to(ctx.device), crops.faces, crops.crop_size)
        x = (crops.crops * 2 - 1).contiguous(memory_format=cl)
        fns = {"bare": lambda x=x: _inference(setup.bare, x)}
        if lookup is not None:
            fns["lookup_off"] = lambda c=crops: lookup(c, setup.handle, quality=1.0, fidelity=0.5, mode="off")
            if b == 1 and ctx.opts.steering:
                fns["lookup_default"] = lambda c=crops: lookup(c, setup.handle)
        ctx.log(f"lookup: batch {b} ({', '.join(fns)})")
        res = ctx.measure(fns, count_flops=(b == 1))
        if b == 1:
            flops_face = {k: m.flops for k, m in res.items()}
        for name, rows in (("bare", bare_rows), ("lookup_off", off_rows), ("lookup_default", default_rows)):
            if name not in res:
                continue
            m = res[name]
            if m.flops is None and flops_face.get(name):
                m.flops = flops_face[name] * b
            rows[b] = m
    report["bare"] = {"description": "module forward of the same network on [N,3,S,S] -1..1 input, first output "
                                     "(what spandrel's ImageModelDescriptor calls)",
                      "batch": {str(b): m.summary(b) for b, m in bare_rows.items()}}
    out: dict = {"input_size": size, "lookup_defaults": {k: repr(v) for k, v in defaults.items()},
                 "steering_off": {}, "defaults": {}}
    for label, rows in (("steering_off", off_rows), ("defaults", default_rows)):
        for b, m in rows.items():
            row = m.summary(b)
            row["ratio_to_bare"] = round(m.median / bare_rows[b].median, 4)
            out[label][str(b)] = row
    if setup.handle is None:
        out["note"] = setup.handle_error
    elif not ctx.opts.steering:
        out["defaults"] = {"status": "skipped", "reason": "lookup at its defaults (quality steering: ~2 rounds "
                           "of gradient + trial decodes) is not timed on full-size CPU runs; pass --steering"}
    summary = {}
    if off_rows.get(1):
        summary["overhead_vs_bare_batch1"] = round(off_rows[1].median / bare_rows[1].median - 1, 4)
    if default_rows.get(1):
        summary["defaults_ratio_to_bare_batch1"] = round(default_rows[1].median / bare_rows[1].median, 4)
    for rows, label in ((bare_rows, "bare"), (off_rows, "lookup")):
        if 1 in rows:
            for b, m in rows.items():
                if b > 1:
                    summary[f"{label}_faces_per_s_batch{b}_over_batch1"] = round(
                        (b / m.median) / (1 / rows[1].median), 3)
    out["summary"] = summary
    return out


def _placed_detections(size: int, faces: int):
    """Detections at known places (one face per tile), for when the detector has no real face to find."""
    from .crop import RawDetections
    tile = size // faces
    marks, boxes = [], []
    for i in range(faces):  # a face half a tile wide in the middle of each tile
        x0, y0 = i * tile + tile / 4, (size - tile) / 2 + tile / 4
        marks.append(torch.tensor(FFHQ_5_POINTS_512) * (tile / 2) / 512 + torch.tensor([x0, y0]))
        boxes.append(torch.tensor([x0, y0, x0 + tile / 2, y0 + tile / 2]))
    return [RawDetections(torch.stack(boxes).float(), torch.ones(faces), torch.stack(marks).float())]


def stage_detect_align_paste(ctx: BenchContext, report: dict) -> dict:
    """Cost per image of detection, alignment and paste-back: one image with 3 faces (1024^2; 512^2 --tiny)."""
    try:
        from .crop import CropOptions, align_faces, detect_faces
    except ImportError as err:
        raise StageUnavailable(f"core.crop not available: {err}") from None
    size, n_faces = (512 if ctx.opts.tiny else 1024), 3
    image, source = group_photo(size, n_faces)
    options = CropOptions(device=str(ctx.device))
    detections = detect_faces(image, options)
    found = sum(int(d.boxes.shape[0]) for d in detections)
    note = ""
    if found != n_faces:
        note = f"detector found {found} of {n_faces} faces in '{source}'; align/paste use placed landmarks"
        detections = _placed_detections(size, n_faces)
    crops = align_faces(image, detections, options)
    fns = {"detect": lambda: detect_faces(image, options), "align": lambda: align_faces(image, detections, options)}
    paste_error = ""
    try:
        from .paste import PasteOptions, paste_back
        paste_options = PasteOptions(device=str(ctx.device))
        fns["paste"] = lambda: paste_back(image, crops, paste_options)
    except ImportError as err:
        paste_error = f"core.paste not available: {err}"
    res = ctx.measure(fns, repeats=ctx.opts.repeats if ctx.opts.tiny else max(ctx.opts.repeats, 3))
    out = {"image": [size, size], "faces": len(crops), "image_source": source, "detector": options.detector}
    for name, m in res.items():
        out[name] = m.summary(1, unit="image")
        out[name]["per_face_s"] = round(m.median / max(len(crops), 1), 6)
    if note:
        out["note"] = note
    if paste_error:
        out["paste"] = {"status": "unavailable", "reason": paste_error}
    total = sum(res[k].median for k in res)
    out["summary"] = {f"{k}_ms_per_image": round(res[k].median * 1e3, 2) for k in res}
    out["summary"]["detect_align_paste_ms_per_image"] = round(total * 1e3, 2)
    bare1 = _get(report, "bare", "batch", "1", "per_face_s")
    if bare1:
        out["summary"]["per_face_over_bare_forward"] = round(total / max(len(crops), 1) / bare1, 4)
    return out


OFFLINE_METRICS_FALLBACK = ("face_niqe", "piqe")


def stage_score(ctx: BenchContext, report: dict) -> dict:
    """Scoring time per 512^2 face for each offline metric (4 faces per call)."""
    try:
        from . import score as score_mod
        from .score import get_metric, score_face_crops
    except ImportError as err:
        raise StageUnavailable(f"core.score not available: {err}") from None
    names = tuple(getattr(score_mod, "OFFLINE_METRICS", OFFLINE_METRICS_FALLBACK))
    n = 2 if ctx.opts.tiny else 4
    size = 256 if ctx.opts.tiny else FULL_CROP
    crops = synthetic_face_crops(n, size, seed=7)
    out: dict = {"faces_per_call": n, "crop_size": size, "metrics": {}}
    fns, errors = {}, {}
    for name in names:
        try:
            metric = get_metric(name, str(ctx.device))
        except Exception as err:  # a metric that cannot load offline is reported, not fatal
            errors[name] = f"{type(err).__name__}: {err}"
            continue
        fns[name] = lambda metric=metric: _inference(score_face_crops, crops, metric)
        critic = getattr(metric, "critic", None)
        if callable(critic):
            x = crops.crops.to(ctx.device).requires_grad_(True)

            def critic_grad(critic=critic, x=x):
                with torch.enable_grad():
                    critic(x).sum().backward()
            fns[f"{name}:critic_forward_backward"] = critic_grad
    res = ctx.measure(fns, repeats=ctx.opts.repeats if ctx.opts.tiny else max(ctx.opts.repeats, 3)) if fns else {}
    for name, m in res.items():
        out["metrics"][name] = m.summary(n)
    for name, err in errors.items():
        out["metrics"][name] = {"status": "unavailable", "reason": err}
    out["summary"] = {f"{k}_ms_per_face": round(m.median / n * 1e3, 2) for k, m in res.items()}
    if not res:
        raise StageUnavailable(f"no offline metric loaded: {errors}")
    return out


def _refine_models(ctx: BenchContext, latent):
    """Random latent prior with the lookup latent's shapes and a random ArcFace IR-SE50 (in --tiny: the same
    facexlib classes with one unit per stage, as tests/refine_fixtures.py)."""
    from facexlib.recognition.arcface_arch import Backbone, bottleneck_IR_SE
    from ..models.arch.identity import ArcFaceEmbedder, IdentityModel, build_arcface_backbone
    from ..models.arch.latent_prior import build_latent_prior
    torch.manual_seed(0)
    c, h = int(latent.quantized.shape[1]), int(latent.quantized.shape[-1])
    overrides = dict(latent_channels=c, cond_channels=int(latent.lq_features.shape[1]), latent_size=h)
    backbone = build_arcface_backbone()
    if ctx.opts.tiny:
        overrides.update(hidden=32, depth=1, heads=2)
        backbone = Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se")
        backbone.body = torch.nn.Sequential(*[bottleneck_IR_SE(a, b, 2) for a, b in
                                              ((64, 64), (64, 128), (128, 256), (256, 512))])
    prior = build_latent_prior(**overrides).to(ctx.device).eval()
    id_model = IdentityModel(ArcFaceEmbedder(backbone)).to(ctx.device).eval()
    for p in list(prior.parameters()) + list(id_model.parameters()):
        p.requires_grad_(False)
    return prior, id_model


def stage_refine(ctx: BenchContext, report: dict) -> dict:
    """Refine cost per face at the default steps, next to the lookup cost of the same run."""
    try:
        from . import refine as refine_mod
    except ImportError as err:
        raise StageUnavailable(f"core.refine not available: {err}") from None
    setup: RestorerSetup = ctx.cached("restorer", lambda: setup_restorer(ctx))
    if setup.handle is None:
        raise StageUnavailable(f"refine needs the lookup step: {setup.handle_error}")
    lookup = _lookup_fn()
    crops = synthetic_face_crops(1, setup.input_size, seed=11)
    restored, latent = lookup(crops, setup.handle, quality=1.0, fidelity=0.5, mode="off")
    prior, id_model = _refine_models(ctx, latent)
    default_steps = refine_mod.DEFAULT_STEPS
    steps = ctx.opts.refine_steps if ctx.opts.refine_steps is not None else default_steps
    cpu = ctx.device.type == "cpu"

    def run_refine(identity_strength):
        # identity guidance needs autograd: not under our inference_mode
        with torch.inference_mode(False):
            return refine_mod.refine(restored, latent, setup.handle, prior, id_model, steps=steps,
                                     identity_strength=identity_strength, seed=0)

    fns = {"guided": lambda: run_refine(refine_mod.DEFAULT_IDENTITY_STRENGTH), "unguided": lambda: run_refine(0.0)}
    with torch.inference_mode(False):
        res = measure_interleaved(fns, ctx.device, 0 if cpu else ctx.opts.warmup, 1 if cpu else ctx.opts.repeats,
                                  count_flops=True, log=ctx.log)
    out = {"steps": steps, "default_steps": default_steps, "strength": refine_mod.DEFAULT_STRENGTH,
           "identity_strength": refine_mod.DEFAULT_IDENTITY_STRENGTH,
           "guidance_steps": getattr(refine_mod, "DEFAULT_GUIDANCE_STEPS", None),
           "sampler": refine_mod.DEFAULT_SAMPLER, "prior": "random LatentScoreModel",
           "id_model": "random ArcFace IR-SE" + (" (1 unit per stage)" if ctx.opts.tiny else "50"),
           "runs": {k: m.summary(1) for k, m in res.items()},
           "note": "CPU: one timed run each, FLOPs counted during it" if cpu else ""}
    guided, unguided = res["guided"], res["unguided"]
    lookup_face = _get(report, "stages", "lookup", "steering_off", "1", "per_face_s")
    lookup_gflop = _get(report, "stages", "lookup", "steering_off", "1", "gflop_per_face")
    summary = {"refine_s_per_face": round(guided.median, 4), "refine_gflop_per_face": round((guided.flops or 0) / 1e9, 2),
               "unguided_s_per_face": round(unguided.median, 4),
               "unguided_gflop_per_face": round((unguided.flops or 0) / 1e9, 2),
               "guided_peak_increment_mib": round(guided.peak_increment / 2 ** 20, 1)}
    if lookup_face:
        summary["lookup_s_per_face"] = lookup_face
        summary["refine_over_lookup"] = round(guided.median / lookup_face, 3)
        summary["unguided_over_lookup"] = round(unguided.median / lookup_face, 3)
    if lookup_gflop:
        summary["refine_over_lookup_flops"] = round((guided.flops or 0) / 1e9 / lookup_gflop, 3)
        summary["unguided_over_lookup_flops"] = round((unguided.flops or 0) / 1e9 / lookup_gflop, 3)
    out["summary"] = summary
    return out


def one_face_image() -> tuple[torch.Tensor, str]:
    """One portrait (a 768^2 London face, detected and aligned to a 512^2 crop) or a grey stand-in."""
    files = london_faces(1)
    if not files:
        return torch.full((1, 768, 768, 3), 0.5), "synthetic grey (no ../shared/data/london)"
    import numpy as np
    from PIL import Image
    arr = np.asarray(Image.open(files[0]).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr)[None].contiguous(), f"London {files[0].name}"


def stage_memory(ctx: BenchContext, report: dict) -> dict:
    """Peak memory of the lookup-only pipeline (detect, align, lookup at defaults, paste) for one face
    against the bare forward at batch 1, measured back to back."""
    try:
        from .crop import CropOptions, align_faces, detect_faces
        from .paste import PasteOptions, paste_back
    except ImportError as err:
        raise StageUnavailable(f"crop/paste not available: {err}") from None
    setup: RestorerSetup = ctx.cached("restorer", lambda: setup_restorer(ctx))
    if setup.handle is None:
        raise StageUnavailable(setup.handle_error)
    lookup = _lookup_fn()
    image, source = one_face_image()
    options = CropOptions(device=str(ctx.device), crop_size=FULL_CROP if setup.input_size >= 256 else 256)
    detections = detect_faces(image, options)
    if sum(int(d.boxes.shape[0]) for d in detections) == 0:
        detections = _placed_detections(image.shape[1], 1)
        source += " (placed landmarks)"
    paste_options = PasteOptions(device=str(ctx.device))
    x = (torch.rand(1, 3, setup.input_size, setup.input_size) * 2 - 1).to(ctx.device)

    lookup_kwargs = {} if ctx.opts.steering else {"mode": "off"}

    def pipeline():
        crops = align_faces(image, detections, options)
        restored, _latent = lookup(crops, setup.handle, **lookup_kwargs)
        return paste_back(image, restored, paste_options)

    cpu = ctx.device.type == "cpu"
    res = ctx.measure({"bare": lambda: _inference(setup.bare, x), "pipeline": pipeline}, warmup=0 if cpu else 1,
                      repeats=1 if cpu and not ctx.opts.tiny else 2)
    weights = module_bytes(setup.bare_module)
    bare, pipe = res["bare"], res["pipeline"]
    out = {"image_source": source, "method": bare.memory_method, "weights_bytes": weights,
           "bare_peak_increment_bytes": bare.peak_increment, "pipeline_peak_increment_bytes": pipe.peak_increment,
           "pipeline_s": round(pipe.median, 4), "detect_excluded": "detection ran once before (its weights stay "
           "loaded); the timed chain is align -> lookup -> paste",
           "lookup_mode": "defaults" if ctx.opts.steering else "off (steering not timed: see lookup stage)"}
    out["summary"] = {
        "pipeline_over_bare_total": round((weights + pipe.peak_increment) / max(weights + bare.peak_increment, 1), 4),
        "pipeline_over_bare_increment": round(pipe.peak_increment / max(bare.peak_increment, 1), 4),
        "bare_peak_mib": round((weights + bare.peak_increment) / 2 ** 20, 1),
        "pipeline_peak_mib": round((weights + pipe.peak_increment) / 2 ** 20, 1),
    }
    return out


def _psnr(a: torch.Tensor, b: torch.Tensor) -> dict:
    diff = (a.float().cpu() - b.float().cpu()).abs()
    mse = float((diff ** 2).mean())
    return {"max_abs_diff": round(float(diff.max()), 5), "mean_abs_diff": round(float(diff.mean()), 6),
            "psnr_db": round(10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-12))).item(), 2)}


def stage_parity(ctx: BenchContext, report: dict) -> dict:
    """Lookup under autocast (bf16/fp16) against fp32 on the same faces.

    Two figures: the decoder on the same codes (the continuous path, where the tolerance applies), and the
    whole lookup, where a code whose top-2 logits are closer than bf16's rounding may flip (random weights
    have many such near ties; trained ones few), so its pixel difference is reported, not judged."""
    setup: RestorerSetup = ctx.cached("restorer", lambda: setup_restorer(ctx))
    if setup.handle is None:
        raise StageUnavailable(setup.handle_error)
    low = ctx.dtype or torch.bfloat16
    if ctx.device.type == "cpu" and not ctx.opts.tiny and ctx.dtype is None:
        raise StageUnavailable("fp32 run on CPU: nothing to compare (use --dtype bf16 or --device cuda)")
    from .lookup import decode
    lookup = _lookup_fn()
    handle = setup.handle
    crops = synthetic_face_crops(2, setup.input_size, seed=3)
    saved = getattr(handle, "precision", "auto")
    try:
        handle.precision = "fp32"
        with inference_context(ctx.device, None):
            ref, ref_latent = lookup(crops, handle, quality=1.0, fidelity=0.5, mode="off")
            ref_dec = decode(handle, ref_latent.quantized, ref_latent.skip_features, ref_latent.fidelity)
        handle.precision = "auto"
        with inference_context(ctx.device, low):
            got, got_latent = lookup(crops, handle, quality=1.0, fidelity=0.5, mode="off")
            got_dec = decode(handle, ref_latent.quantized, ref_latent.skip_features, ref_latent.fidelity)
    finally:
        handle.precision = saved
    out = {"dtype": str(low).replace("torch.", ""), "decoder_same_codes": _psnr(got_dec, ref_dec),
           "whole_lookup": _psnr(got.crops, ref.crops),
           "tolerance": {"mean_abs_diff": round(PARITY_MEAN_ABS_TOL, 5), "psnr_db": PARITY_PSNR_DB,
                         "applies_to": "decoder_same_codes"}}
    if ref_latent.indices is not None and got_latent.indices is not None:
        out["code_indices_changed"] = round(float((ref_latent.indices.cpu() != got_latent.indices.cpu())
                                                  .float().mean()), 4)
    dec = out["decoder_same_codes"]
    out["within_tolerance"] = dec["mean_abs_diff"] <= PARITY_MEAN_ABS_TOL and dec["psnr_db"] >= PARITY_PSNR_DB
    out["summary"] = {"dtype": out["dtype"], "decoder_psnr_db": dec["psnr_db"],
                      "decoder_mean_abs_diff": dec["mean_abs_diff"], "within_tolerance": out["within_tolerance"],
                      "whole_lookup_psnr_db": out["whole_lookup"]["psnr_db"],
                      "code_indices_changed": out.get("code_indices_changed")}
    return out


# bf16 keeps 8 bits of mantissa: on 0..1 images a mean error under 1/255 and PSNR over 35 dB is invisible
PARITY_MEAN_ABS_TOL = 1 / 255
PARITY_PSNR_DB = 35.0


def run_bench(opts: BenchOptions) -> dict:
    from ..errors import FaceRefineError
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
                              "lookup_handle": setup.handle is not None, "note": setup.handle_error or None}
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


def _get(d: dict, *path, default=None):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def evaluate_targets(report: dict) -> list[dict]:
    """The issue's targets, from this run's figures; met is None where this run cannot tell."""
    cuda = report["device"].startswith("cuda")
    stages = report["stages"]
    targets = []

    def add(name, value, limit, op, needs=None, note=""):
        met = None if value is None or (needs is not None and not needs) else (
            value <= limit if op == "<=" else value >= limit)
        targets.append({"name": name, "value": value, "limit": f"{op} {limit}", "met": met, "note": note})

    overhead = _get(stages, "lookup", "summary", "overhead_vs_bare_batch1")
    add("lookup-only overhead over bare forward, batch 1", overhead, 0.15, "<=")
    ratio_default = _get(stages, "lookup", "summary", "defaults_ratio_to_bare_batch1")
    add("CPU: lookup at defaults / bare forward, batch 1", ratio_default, 2.0, "<=", needs=not cuda,
        note="measured on CPU only")
    mem = _get(stages, "memory", "summary", "pipeline_over_bare_total")
    add("pipeline peak memory for one 512^2 face / bare forward peak", mem, 1.3, "<=")
    refine_ratio = _get(stages, "refine", "summary", "refine_over_lookup")
    add("refine at default steps / lookup (GPU)", refine_ratio, 1.0, "<=", needs=cuda,
        note="" if cuda else "CPU figure reported; the target is for GPU")
    refine_flops = _get(stages, "refine", "summary", "refine_over_lookup_flops")
    add("refine / lookup in FLOPs (a proxy for the GPU ratio)", refine_flops, 1.0, "<=",
        note="FLOPs, not time: meant to predict the GPU target where no GPU was measured")
    scale8 = _get(stages, "lookup", "summary", "lookup_faces_per_s_batch8_over_batch1")
    add("GPU: faces/s batch 8 / batch 1", scale8, 3.0, ">=", needs=cuda)
    tflops16 = _get(stages, "lookup", "steering_off", "16", "achieved_tflops")
    peak = report["machine"].get("gpu_bf16_peak_tflops")
    frac = round(tflops16 / peak, 4) if (tflops16 and peak) else None
    add("GPU: lookup achieved TFLOP/s at batch 16, bf16, fraction of peak", frac, 0.40, ">=",
        needs=cuda and report["options"]["dtype"] == "bf16")
    parity = _get(stages, "parity", "within_tolerance")
    targets.append({"name": "autocast output parity with fp32", "value": _get(stages, "parity", "summary"),
                    "limit": f"mean abs diff <= {PARITY_MEAN_ABS_TOL:.4f}, PSNR >= {PARITY_PSNR_DB} dB",
                    "met": parity, "note": ""})
    return targets


STAGE_FUNCTIONS: dict[str, Callable[[BenchContext, dict], dict]] = {
    "lookup": stage_lookup,
    "detect_align_paste": stage_detect_align_paste,
    "score": stage_score,
    "refine": stage_refine,
    "memory": stage_memory,
    "parity": stage_parity,
}
