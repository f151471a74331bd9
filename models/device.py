"""The one device resolver: what ``device`` (auto | cpu | cuda[:N] | mps) means in every front end.

``auto`` (also ``default`` or empty) is, in order:
1. the host's device when running inside one: ComfyUI's ``model_management.get_torch_device()``,
   A1111/Forge's face-restoration device (``modules.devices.device_codeformer``, else ``devices.device``);
2. otherwise ``cuda`` when torch sees a GPU, else ``cpu``.
An explicit device that is not there is a user error (FaceRefineError), never a silent fallback.
Host modules are only consulted when the host has already imported them; this module never imports a host.
"""
from __future__ import annotations

import sys
from typing import Optional

import torch

from ..errors import FaceRefineError

AUTO_NAMES = ("", "auto", "default")


def host_device() -> Optional[torch.device]:
    """The device of the host this runs in (ComfyUI, A1111/Forge), None outside a host."""
    mm = sys.modules.get("comfy.model_management")
    if mm is not None and hasattr(mm, "get_torch_device"):
        return torch.device(mm.get_torch_device())
    devices = sys.modules.get("modules.devices")
    if devices is not None:
        dev = getattr(devices, "device_codeformer", None) or getattr(devices, "device", None)
        if dev is not None:
            return torch.device(dev)
    return None


def resolve_device(name: Optional[object] = "auto") -> str:
    """'auto' -> the host's device, else cuda when available, else cpu. Asking for an absent GPU is an error."""
    if isinstance(name, torch.device):
        name = str(name)
    name = str(name or "auto").strip().lower()
    if name in AUTO_NAMES:
        host = host_device()
        if host is not None:
            return str(host)
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FaceRefineError(f"device '{name}' requested but no CUDA GPU is available; use --device cpu")
    if name.startswith("mps") and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise FaceRefineError(f"device '{name}' requested but MPS is not available; use --device cpu")
    try:
        torch.device(name)
    except RuntimeError as err:
        raise FaceRefineError(f"unknown device '{name}': {err}") from err
    return name


def get_device(name: Optional[object] = "auto") -> torch.device:
    """``resolve_device`` as a torch.device."""
    return torch.device(resolve_device(name))
