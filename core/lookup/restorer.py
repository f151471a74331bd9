"""The RESTORER handle: a loaded restorer on a device, plus how to run it."""
from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ...models.restorers import CODEBOOK_ARCHS, LoadedRestorer, attach_quality_condition, load_restorer_file

log = logging.getLogger("facerefine")


@dataclass
class Restorer:
    loaded: LoadedRestorer
    device: torch.device
    channels_last: bool = False
    precision: str = "auto"  # auto: bf16/fp16 autocast on CUDA; fp32: never autocast (parity checks, bench)
    load_notes: list = field(default_factory=list)  # what 'auto' skipped on the way (warnings)

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def architecture(self) -> str:
        return self.loaded.architecture

    @property
    def module(self) -> torch.nn.Module:
        """The network itself (spandrel's CodeFormer/GFPGAN/RestoreFormer, or IQPFR), e.g. for a bare forward."""
        return self.loaded.module

    @property
    def codebook(self):
        """Lookup surface (encode/logits/code_features/finish_quantize/decode) or None (GFPGAN, RestoreFormer)."""
        return self.loaded.codebook

    @property
    def img_size(self) -> int:
        return self.loaded.img_size

    @property
    def supports_quality(self) -> bool:
        """Whether the quality slider can act (a lookup Transformer exists)."""
        return self.architecture in CODEBOOK_ARCHS

    @property
    def supports_fidelity(self) -> bool:
        return self.architecture in CODEBOOK_ARCHS

    @property
    def has_trained_conditioning(self) -> bool:
        return self.loaded.has_trained_conditioning

    def to(self, device, channels_last: Optional[bool] = None) -> "Restorer":
        """Move to a device. Codebook restorers use channels_last on CUDA (the NHWC layout tensor-core
        convolutions use; CPU stays NCHW by default). GFPGAN always stays NCHW: its style code
        flattens a conv feature with .view, which fails on channels_last."""
        device = torch.device(device)
        if channels_last is None:
            channels_last = device.type == "cuda"
        channels_last = bool(channels_last) and self.architecture != "GFPGAN"
        if device != self.device or channels_last != self.channels_last:
            layout = torch.channels_last if channels_last else torch.contiguous_format
            self.loaded.module.to(device, memory_format=layout)
            if self.codebook is not None:
                self.codebook.to(device, memory_format=layout)
            self.device = device
            self.channels_last = channels_last
        return self

    def attach_quality_condition(self, path) -> "Restorer":
        attach_quality_condition(self.loaded, Path(path))
        self.loaded.codebook.to(self.device)
        return self

    def autocast(self):
        """bf16 autocast on CUDA when the architecture supports it (fp16 otherwise); no-op on CPU."""
        if self.device.type != "cuda" or self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.loaded.supports_bfloat16 and torch.cuda.is_bf16_supported() else \
            (torch.float16 if self.loaded.supports_half else None)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=dtype)

    def __repr__(self) -> str:
        cond = ", quality-conditioned" if self.has_trained_conditioning else ""
        return f"Restorer({self.name}, {self.architecture}{cond}, {self.device})"


def load_restorer(name_or_path, device=None, quality_condition: Optional[str] = None) -> Restorer:
    """Load a restorer by registry name, file name (searched in facerestore_models) or path.

    'auto' tries the community restorers found on disk, then the embedded compact model; a file that
    cannot be loaded (corrupt, wrong architecture, NaN weights...) is skipped with a warning naming it,
    kept in ``restorer.load_notes``.
    quality_condition: optional IQPFR conditioning weights (name/path, searched in the facerefine folder)
    for a CodeFormer checkpoint. Wrong files raise WrongArchitectureError.
    """
    from ...errors import FaceRefineError
    from ...models.registry import restorer_candidates
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
    from ...models.locate import resolve
    from ...models.registry import get_spec
    path = resolve(name_or_path, "facerestore_models")
    name = str(name_or_path) if get_spec(str(name_or_path)) else path.name
    cond_path = resolve(quality_condition, "facerefine") if quality_condition else None
    loaded = load_restorer_file(path, name, cond_path)
    device = torch.device(device or "cpu")
    return Restorer(loaded, torch.device("cpu")).to(device)
