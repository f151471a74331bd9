"""Bench options, the shared run context, its inputs (synthetic and London faces) and the restorer
under test."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from .measure import Measurement, measure_interleaved

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


ALL_STAGES = ("lookup", "default_model", "detect_align_paste", "score", "refine", "memory", "parity")



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
    from ...core.types import FaceCrops, FaceInfo

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
    from ..datasets import shared_data_dir
    files = sorted((shared_data_dir() / "london" / "neutral").glob("*.jpg"))
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


@dataclass
class RestorerSetup:
    path: Optional[Path]
    architecture: str
    input_size: int
    description: str
    bare: Callable[[torch.Tensor], object]    # the bare forward on [N,3,S,S] in -1..1
    bare_module: torch.nn.Module
    handle: object = None                    # the models.restorers Restorer wrapping bare_module
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
        from ...models.locate import resolve
        path = Path(resolve(opts.restorer, "facerestore_models"))
        description = f"weights file {path.name}"
    elif opts.tiny:  # tiny CodeFormer keeps the full CNN (seconds per face): use our small IQPFR
        from ..tiny_models import make_tiny_iqpfr
        path = make_tiny_iqpfr(ctx.workdir / "tiny-iqpfr.safetensors")
        description = "tiny IQPFR (lab/tiny_models.py, 64^2 input); bare = the module's own forward"
    else:
        from ...models.loading import save_safetensors
        path = save_safetensors(full_codeformer_state(), ctx.workdir / "codeformer-random-full.safetensors")
        description = "random weights, full-size CodeFormer shapes (as codeformer.pth)"

    from ...models.restorers import load_restorer
    handle = load_restorer(str(path), device)
    if hasattr(handle, "precision"):
        handle.precision = "fp32" if opts.dtype == "fp32" else "auto"
    module = _find_module(handle)
    descriptor = getattr(handle, "descriptor", None)
    if module is None:
        from ...models.arch.iqpfr import IQPFR
        from ...models.loading import load_state_dict
        sd = load_state_dict(path)
        if IQPFR.is_state_dict(sd):
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

    return RestorerSetup(path, architecture, input_size, description, bare, module, handle,
                         sum(p.numel() for p in module.parameters()), _layout(module))


def _layout(module: torch.nn.Module) -> str:
    for p in module.parameters():
        if p.ndim == 4:
            return "channels_last" if p.is_contiguous(memory_format=torch.channels_last) and \
                not p.is_contiguous() else "contiguous (NCHW)"
    return "n/a"


def _find_module(handle) -> Optional[torch.nn.Module]:
    """The restorer network inside a restorer handle (shared, so the bare and the pipeline use one copy)."""
    for attr in ("model", "module", "net", "network", "descriptor"):
        obj = getattr(handle, attr, None)
        if isinstance(obj, torch.nn.Module):
            return obj
        inner = getattr(obj, "model", None)
        if isinstance(inner, torch.nn.Module):
            return inner
    return None



def one_face_image() -> tuple[torch.Tensor, str]:
    """One portrait (a 768^2 London face, detected and aligned to a 512^2 crop) or a grey stand-in."""
    files = london_faces(1)
    if not files:
        return torch.full((1, 768, 768, 3), 0.5), "synthetic grey (no ../shared/data/london)"
    import numpy as np
    from PIL import Image
    arr = np.asarray(Image.open(files[0]).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr)[None].contiguous(), f"London {files[0].name}"



def nested_get(d: dict, *path, default=None):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


