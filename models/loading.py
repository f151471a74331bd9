"""Safe state-dict loading: safetensors first, pickles only with weights_only=True."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Iterable, Mapping

import torch

from ..errors import WeightsFormatError, WrongArchitectureError
from .tempfiles import unique_temp_path

_WRAPPERS = ("params_ema", "params", "state_dict", "model", "module")


# dtypes a weights file may hold: floating point values, plus 32/64-bit integer buffers (BatchNorm's
# num_batches_tracked, index tables). int8/uint8/bool/complex/float8/quantized tensors are refused.
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INT_DTYPES = (torch.int32, torch.int64)


def load_state_dict(path: str | os.PathLike, unwrap: bool = True, validate: bool = True) -> dict[str, torch.Tensor]:
    """Read tensors from a weights file on CPU. Never executes pickled code.

    ``validate`` (default): refuse tensors of a dtype no model here uses (int8, bool, complex, ...) and
    floating tensors holding NaN/inf (see :func:`check_tensors`). Training checkpoints that also store
    RNG states (uint8) pass ``validate=False``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsFormatError(f"weights file {path} does not exist")
    if path.stat().st_size == 0:
        raise WeightsFormatError(f"weights file {path} is empty (interrupted download?) - delete it and retry")
    if path.suffix.lower() == ".safetensors":
        sd = _load_safetensors(path)
    else:
        sd = _load_pickle(path)
    if unwrap:
        sd = unwrap_state_dict(sd)
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise WeightsFormatError(f"weights file {path} holds no tensors")
    if validate:
        check_tensors(sd, path.name)
    return sd


def check_tensors(sd: Mapping[str, torch.Tensor], file: str = "weights") -> None:
    """Raise WeightsFormatError for a dtype no model uses or for NaN/inf values (they paint faces black)."""
    wrong = [(k, v.dtype) for k, v in sd.items() if v.dtype not in FLOAT_DTYPES and v.dtype not in INT_DTYPES]
    if wrong:
        listed = ", ".join(f"{k} ({str(d).replace('torch.', '')})" for k, d in wrong[:5])
        raise WeightsFormatError(
            f"{file} holds {len(wrong)} tensor(s) of a type no face model here uses: {listed}. Expected "
            f"float16/bfloat16/float32 weights; quantized (int8), boolean or complex files are not supported - "
            f"use the original floating-point file")
    bad = []
    for k, v in sd.items():
        if v.dtype in FLOAT_DTYPES and v.numel() and not bool(torch.isfinite(v).all()):
            bad.append(f"{k} ({int((~torch.isfinite(v)).sum())} of {v.numel()} values)")
            if len(bad) >= 5:
                break
    if bad:
        raise WeightsFormatError(
            f"{file} holds NaN/inf weights in {', '.join(bad)}: the file is corrupt or its training diverged; "
            f"download or train it again")


def unwrap_state_dict(sd: Mapping) -> dict:
    """Strip BasicSR (params_ema/params) and Lightning (state_dict) wrappers and 'module.' prefixes."""
    for key in _WRAPPERS:
        inner = sd.get(key) if isinstance(sd, Mapping) else None
        if isinstance(inner, Mapping) and inner and any(isinstance(v, torch.Tensor) for v in inner.values()):
            sd = inner
            break
    if not isinstance(sd, Mapping):
        raise WeightsFormatError("weights file does not contain a state dict")
    if sd and all(isinstance(k, str) and k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def _load_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise WeightsFormatError(
            f"{path.name} is not a valid safetensors file ({err}); it may be truncated or corrupt - "
            f"delete it and download it again") from err


def _load_pickle(path: Path) -> dict:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle_errors() as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "weights_only" in str(err) or "Unsupported global" in str(err) or "GLOBAL" in str(err):
            raise WeightsFormatError(
                f"refused to load {path.name}: it contains pickled Python objects beyond plain tensors, "
                f"which could run code ({msg}). Convert it to .safetensors from a trusted source.") from err
        raise WeightsFormatError(f"{path.name} is not a readable PyTorch weights file ({msg}); "
                                 f"it may be truncated or corrupt") from err


def pickle_errors() -> tuple[type[BaseException], ...]:
    import pickle
    return (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError,
            AttributeError, TypeError, KeyError, IndexError, UnicodeDecodeError, ImportError)


def check_keys(expected: Iterable[str], got: Iterable[str], architecture: str, file: str = "",
               allow_missing: Iterable[str] = ()) -> None:
    """Raise WrongArchitectureError listing the first missing/unexpected keys."""
    expected, got = set(expected), set(got)
    allowed = set(allow_missing)
    missing = sorted(k for k in expected - got if k not in allowed)
    unexpected = sorted(got - expected)
    if missing or unexpected:
        raise WrongArchitectureError(
            f"{file or 'weights'} does not match the expected architecture {architecture}: "
            f"{len(missing)} missing keys (first: {missing[:5]}), "
            f"{len(unexpected)} unexpected keys (first: {unexpected[:5]})")


def load_into(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], architecture: str, file: str = "",
              check_only: bool = False) -> None:
    """Strict load with a readable error for wrong architecture or shapes.

    ``check_only``: compare keys and shapes only (the module may live on the meta device)."""
    check_keys(module.state_dict().keys(), sd.keys(), architecture, file)
    own = module.state_dict()
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
             for k, v in sd.items() if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise WrongArchitectureError(
            f"{file or 'weights'} has the keys of {architecture} but other shapes (a different size "
            f"config?): {wrong[:5]}")
    if not check_only:
        module.load_state_dict(sd, strict=True)


def save_safetensors(sd: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Atomic safetensors write (contiguous CPU tensors)."""
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = unique_temp_path(path)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(tmp),
                  metadata={k: str(v) for k, v in (metadata or {}).items()})
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path

