"""Safe state-dict loading: safetensors first, pickles only with weights_only=True."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Iterable, Mapping

import torch

from ..errors import WeightsFormatError, WrongArchitectureError

_WRAPPERS = ("params_ema", "params", "state_dict", "model", "module")


def load_state_dict(path: str | os.PathLike, unwrap: bool = True) -> dict[str, torch.Tensor]:
    """Read tensors from a weights file on CPU. Never executes pickled code."""
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
    return sd


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


def load_into(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], architecture: str, file: str = "") -> None:
    """Strict load with a readable error for wrong architecture or shapes."""
    check_keys(module.state_dict().keys(), sd.keys(), architecture, file)
    own = module.state_dict()
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
             for k, v in sd.items() if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise WrongArchitectureError(
            f"{file or 'weights'} has the keys of {architecture} but other shapes (a different size "
            f"config?): {wrong[:5]}")
    module.load_state_dict(sd, strict=True)


def save_safetensors(sd: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Atomic safetensors write (contiguous CPU tensors)."""
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(tmp),
              metadata={k: str(v) for k, v in (metadata or {}).items()})
    os.replace(tmp, path)
    return path
