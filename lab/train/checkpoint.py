"""Resumable training checkpoints as one safetensors file (no pickles).

Layout: ``module.<name>.<key>`` model tensors, ``optim.<name>.<param index>.<state key>`` optimiser
tensors, ``rng.<name>`` generator states; the metadata holds the step, the config and the optimisers'
param_groups (JSON). Loading goes through models.loading (safetensors only).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Optional

import torch

from ...errors import FaceRefineError
from ...models.loading import load_state_dict, save_safetensors


def save_checkpoint(path: Path, step: int, modules: Mapping[str, torch.nn.Module],
                    optimizers: Mapping[str, torch.optim.Optimizer], rng: Mapping[str, torch.Tensor],
                    config: dict, extra: Optional[dict] = None) -> Path:
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for k, v in module.state_dict().items():
            tensors[f"module.{name}.{k}"] = v
    groups = {}
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        groups[name] = sd["param_groups"]
        for idx, state in sd["state"].items():
            for k, v in state.items():
                t = v if isinstance(v, torch.Tensor) else torch.tensor(v)
                tensors[f"optim.{name}.{idx}.{k}"] = t
    for name, state in rng.items():
        tensors[f"rng.{name}"] = state
    meta = {"step": step, "config": json.dumps(config), "param_groups": json.dumps(groups),
            "format": "facerefine-train-checkpoint", "extra": json.dumps(extra or {})}
    return save_safetensors(tensors, path, metadata=meta)


def read_metadata(path: Path) -> dict:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "facerefine-train-checkpoint":
        raise FaceRefineError(f"{path} is not a FaceRefine training checkpoint")
    return meta


def load_checkpoint(path: Path, modules: Mapping[str, torch.nn.Module],
                    optimizers: Mapping[str, torch.optim.Optimizer]) -> tuple[int, dict[str, torch.Tensor], dict]:
    """Restore modules and optimisers in place; returns (step, rng states, extra)."""
    meta = read_metadata(path)
    sd = load_state_dict(path, unwrap=False, validate=False)  # rng states are uint8
    for name, module in modules.items():
        prefix = f"module.{name}."
        part = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if part:
            missing, unexpected = module.load_state_dict(part, strict=False)
            if unexpected or [m for m in missing if not m.endswith("num_batches_tracked")]:
                raise FaceRefineError(f"checkpoint {path.name} does not match module {name!r} "
                                      f"(missing {missing[:3]}, unexpected {unexpected[:3]}): was the config changed?")
    groups = json.loads(meta["param_groups"])
    for name, opt in optimizers.items():
        if name not in groups:
            continue
        prefix = f"optim.{name}."
        state: dict[int, dict] = {}
        for k, v in sd.items():
            if k.startswith(prefix):
                idx, key = k[len(prefix):].split(".", 1)
                state.setdefault(int(idx), {})[key] = v
        opt.load_state_dict({"state": state, "param_groups": groups[name]})
    rng = {k[len("rng."):]: v for k, v in sd.items() if k.startswith("rng.")}
    return int(meta["step"]), rng, json.loads(meta.get("extra", "{}"))
