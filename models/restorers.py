"""Face restorers: one table of architectures, one handle, one factory.

    restorer = load_restorer("codeformer", "cuda")   # registry name, file name, path or "auto"

``RESTORERS`` lists each architecture in detection order: how to recognise its state dict, how to build it
and what it can do (capabilities as fields, never branches on its name). Community checkpoints are built by
spandrel (models/spandrel_loader.py); IQPFR and IQPFR v2 are ours. Files are read only through models.loading
(safetensors, or .pth with weights_only=True). Codebook restorers expose models/codebook.py's interface.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Optional

import torch
from torch import nn

from ..errors import FaceRefineError, WrongArchitectureError
from .arch.codeformer import CodeFormerCodebook
from .arch.iqpfr import IQPFR
from .arch.iqpfr_v2 import IQPFRv2
from .arch.quality_condition import load_quality_condition
from .codebook import CodebookModel
from .loading import load_state_dict
from .locate import resolve
from .registry import get_spec, restorer_candidates
from .spandrel_loader import canonical_state_dict, gfpgan_sized, spandrel_architecture, spandrel_load

log = logging.getLogger("facerefine")

StateDict = Mapping[str, torch.Tensor]


class Built(NamedTuple):
    module: nn.Module                       # the network (spandrel's model, or IQPFR)
    codebook: Optional[CodebookModel]       # its codebook interface, None without a lookup
    descriptor: Any = None                  # spandrel's ModelDescriptor when spandrel built it


@dataclass(frozen=True)
class RestorerArch:
    """One restorer architecture: ``detect(sd)``, ``load(sd, path) -> Built`` and its capabilities."""

    id: str
    detect: Callable[[StateDict], bool]
    load: Callable[[dict, Path], Built]
    codebook: bool = False                  # lookup Transformer over a codebook: quality slider, fidelity, refine
    quality_built_in: bool = False          # trained quality conditioning inside the file
    conditionable: bool = False             # takes a quality-conditioning file (models/arch/quality_condition.py)
    supports_half: bool = False
    supports_bfloat16: bool = True
    channels_last: bool = True              # False: stays NCHW (GFPGAN's style code .view()s a conv feature)
    input_size: Optional[int] = 512         # None: the file's config says
    size_multiple: Optional[int] = None     # fully convolutional: crops of a multiple of this run at their size
    run: Optional[Callable[["Restorer", torch.Tensor], torch.Tensor]] = None  # whole network, without a codebook


def _spandrel_detects(arch_id: str) -> Callable[[StateDict], bool]:
    return lambda sd: spandrel_architecture(sd) == arch_id


def _load_ours(cls) -> Callable[[dict, Path], Built]:
    def load(sd: dict, path: Path) -> Built:
        model = cls.from_file(path, sd)
        return Built(model, model)
    return load


def _load_spandrel(arch_id: str, adapter=None, fallback=None) -> Callable[[dict, Path], Built]:
    def load(sd: dict, path: Path) -> Built:
        descriptor = spandrel_load(sd, arch_id, path.name, fallback)
        return Built(descriptor.model, adapter(descriptor.model) if adapter else None, descriptor)
    return load


def _run_gfpgan(restorer: "Restorer", x01: torch.Tensor) -> torch.Tensor:
    """Deterministic: StyleGAN noise buffers, not random noise."""
    return (restorer.module(x01 * 2 - 1, return_rgb=False, randomize_noise=False)[0] + 1) / 2


def _run_descriptor(restorer: "Restorer", x01: torch.Tensor) -> torch.Tensor:
    return restorer.descriptor(x01)  # spandrel's call normalises itself


RESTORERS: tuple[RestorerArch, ...] = (
    RestorerArch("IQPFRv2", IQPFRv2.is_state_dict, _load_ours(IQPFRv2), codebook=True, quality_built_in=True,
                 supports_half=True, input_size=None, size_multiple=IQPFRv2.latent_stride),
    RestorerArch("IQPFR", IQPFR.is_state_dict, _load_ours(IQPFR), codebook=True, quality_built_in=True,
                 supports_half=True, input_size=None),
    RestorerArch("CodeFormer", _spandrel_detects("CodeFormer"), _load_spandrel("CodeFormer", CodeFormerCodebook),
                 codebook=True, conditionable=True),
    RestorerArch("GFPGAN", _spandrel_detects("GFPGAN"), _load_spandrel("GFPGAN", fallback=gfpgan_sized),
                 channels_last=False, run=_run_gfpgan),
    RestorerArch("RestoreFormer", _spandrel_detects("RestoreFormer"), _load_spandrel("RestoreFormer"),
                 run=_run_descriptor),
)
SUPPORTED = ", ".join(a.id for a in RESTORERS)


def find_architecture(sd: StateDict) -> Optional[RestorerArch]:
    """The first architecture of RESTORERS that detects the state dict."""
    return next((arch for arch in RESTORERS if arch.detect(sd)), None)


def detect_architecture(sd: StateDict) -> Optional[str]:
    """Architecture id from the keys: a restorer's, else another spandrel model's (named in errors); None."""
    arch = find_architecture(sd)
    return arch.id if arch is not None else spandrel_architecture(sd)


@dataclass
class Restorer:
    """A loaded restorer on a device: its architecture entry, the network, and how to run it."""

    name: str
    arch: RestorerArch
    path: Path
    module: nn.Module
    codebook: Optional[CodebookModel]       # the lookup interface, or None (GFPGAN, RestoreFormer)
    img_size: int
    descriptor: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    channels_last: bool = False
    precision: str = "auto"  # auto: bf16/fp16 autocast on CUDA; fp32: never autocast (parity checks, bench)
    load_notes: list = field(default_factory=list)  # what 'auto' skipped on the way (warnings)

    @property
    def architecture(self) -> str:
        return self.arch.id

    @property
    def supports_quality(self) -> bool:
        """Whether the quality slider (and fidelity) can act: a lookup Transformer exists."""
        return self.arch.codebook

    @property
    def has_trained_conditioning(self) -> bool:
        return self.arch.quality_built_in or getattr(self.codebook, "quality_condition", None) is not None

    def model_size(self, crop_size: int) -> int:
        """The size crops run at: their own where the architecture is fully convolutional, else its own."""
        multiple = self.arch.size_multiple
        return crop_size if multiple and crop_size % multiple == 0 else self.img_size

    def run_whole(self, x01: torch.Tensor) -> torch.Tensor:
        """Restorers without a codebook: 0..1 in, 0..1 out."""
        if self.arch.run is None:
            raise FaceRefineError(f"{self.architecture} runs through the codebook lookup")
        return self.arch.run(self, x01)

    def to(self, device, channels_last: Optional[bool] = None) -> "Restorer":
        """Move to a device. channels_last (the NHWC layout tensor-core convolutions use) defaults to CUDA only,
        and never where the architecture must stay NCHW."""
        device = torch.device(device)
        if channels_last is None:
            channels_last = device.type == "cuda"
        channels_last = bool(channels_last) and self.arch.channels_last
        if device != self.device or channels_last != self.channels_last:
            layout = torch.channels_last if channels_last else torch.contiguous_format
            self.module.to(device, memory_format=layout)
            if self.codebook is not None:
                self.codebook.to(device, memory_format=layout)
            self.device = device
            self.channels_last = channels_last
        return self

    def attach_quality_condition(self, path) -> "Restorer":
        """Attach quality-conditioning weights (CodeFormer-family restorers)."""
        if not self.arch.conditionable:
            raise WrongArchitectureError(
                f"quality-conditioning files apply to CodeFormer restorers; {self.name} is {self.architecture}"
                + (" (IQPFR has its conditioning built in)" if self.arch.quality_built_in else ""))
        cb = self.codebook
        cond = load_quality_condition(Path(path), cb.dim_embd, cb.n_layers, detect=detect_architecture)
        cond.eval()
        for p in cond.parameters():
            p.requires_grad_(False)
        cb.quality_condition = cond.to(next(cb.net.parameters()).device)
        return self

    def autocast(self):
        """bf16 autocast on CUDA when the architecture supports it (fp16 otherwise); no-op on CPU."""
        if self.device.type != "cuda" or self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.arch.supports_bfloat16 and torch.cuda.is_bf16_supported() else \
            (torch.float16 if self.arch.supports_half else None)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=dtype)

    def __repr__(self) -> str:
        cond = ", quality-conditioned" if self.has_trained_conditioning else ""
        return f"Restorer({self.name}, {self.architecture}{cond}, {self.device})"


def load_restorer(name_or_path, device=None, quality_condition: Optional[str] = None) -> Restorer:
    """Load a restorer by registry name, file name (searched in facerestore_models) or path, on ``device``
    (default CPU), eval mode, no gradients on its weights.

    'auto' tries the community restorers found on disk, then the embedded compact model; a file that
    cannot be loaded (corrupt, wrong architecture, NaN weights...) is skipped with a warning naming it,
    kept in ``restorer.load_notes``.
    quality_condition: optional IQPFR conditioning weights (name/path, searched in the facerefine folder)
    for a CodeFormer checkpoint. Wrong files raise WrongArchitectureError.
    """
    if str(name_or_path).strip().lower() not in ("auto", "default"):
        return _load_one(name_or_path, device, quality_condition)
    notes: list[str] = []
    candidates = restorer_candidates()
    for i, candidate in enumerate(candidates):
        try:
            restorer = _load_one(candidate, device, quality_condition)
        except FaceRefineError as err:
            if i == len(candidates) - 1:
                raise
            msg = (f"restorer 'auto': skipped {candidate} ({str(err).splitlines()[0]}); "
                   f"trying {candidates[i + 1]}")
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            log.warning("FaceRefine: %s", msg)
            notes.append(msg)
            continue
        restorer.load_notes = notes
        return restorer
    raise AssertionError("unreachable: the embedded restorer is always a candidate")


def _load_one(name_or_path, device, quality_condition: Optional[str]) -> Restorer:
    path = resolve(name_or_path, "facerestore_models")
    name = str(name_or_path) if get_spec(str(name_or_path)) else path.name
    cond_path = resolve(quality_condition, "facerefine") if quality_condition else None
    restorer = _read(path, name)
    if cond_path is not None:
        restorer.attach_quality_condition(cond_path)
    return restorer.to(torch.device(device or "cpu"))


def _read(path: Path, name: str) -> Restorer:
    """The restorer in a file, on CPU, eval mode, no gradients on its weights."""
    sd = canonical_state_dict(load_state_dict(path))
    arch = find_architecture(sd)
    if arch is None:
        _refuse(sd, path)
    built = arch.load(sd, path)
    built.module.eval()
    for p in built.module.parameters():
        p.requires_grad_(False)
    img_size = arch.input_size or built.module.img_size
    return Restorer(name, arch, path, built.module, built.codebook, img_size, built.descriptor)


def _refuse(sd: dict, path: Path) -> None:
    other = spandrel_architecture(sd)
    if other is not None:
        raise WrongArchitectureError(
            f"{path.name} is a spandrel '{other}' model, not a face restorer; expected one of {SUPPORTED}")
    hint = " It is quality-conditioning weights: pass it as the conditioning file." if "to_film.weight" in \
        {k.split("quality_condition.")[-1] for k in sd} else ""
    raise WrongArchitectureError(
        f"{path.name} is not a face restorer we can load (expected one of {SUPPORTED}; "
        f"first keys: {list(sd)[:4]}).{hint}")


__all__ = ["RESTORERS", "Built", "Restorer", "RestorerArch", "detect_architecture", "find_architecture",
           "load_restorer"]
