"""The stage runner behind ``python -m facerefine train STAGE --config FILE``.

One JSON config describes a whole model (see configs/). For each stage the runner:
builds the stage (models + optimisers), resumes from ``<out_dir>/<stage>/last.safetensors`` when
present, draws seeded HQ batches from the aligned-face cache, makes LQ with lab.degrade, calls the
stage's step under autocast (bf16 on CUDA when supported, else fp16 with a GradScaler; fp32 on CPU),
logs losses to ``log.jsonl`` and stdout, checkpoints every ``checkpoint_every`` steps and on exit
(also on Ctrl-C / time budget), and finally exports the stage's weights as safetensors.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from ...errors import FaceRefineError
from ..degrade import DegradeConfig, degrade
from .checkpoint import load_checkpoint, save_checkpoint
from .data import FaceBatches, build_cache, resolve_sources

STAGE_ALIASES = {"1": "vqgan", "2": "lookup", "3": "prior", "4": "identity",
                 "codebook": "vqgan", "transformer": "lookup", "score": "prior", "latent": "prior",
                 "irn": "identity"}


def canonical_stage(name: str) -> str:
    from .stages import STAGES
    key = STAGE_ALIASES.get(str(name).lower(), str(name).lower())
    if key not in STAGES:
        raise FaceRefineError(f"unknown training stage {name!r}; choose from {list(STAGES)} (or 1-4)")
    return key


def load_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        packaged = Path(__file__).resolve().parents[2] / "configs" / path.name
        if packaged.is_file():
            path = packaged
        else:
            raise FaceRefineError(f"config file {path} not found (packaged configs are in {packaged.parent})")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise FaceRefineError(f"{path} is not valid JSON: {err}") from err
    cfg.setdefault("_config_dir", str(path.resolve().parent))
    return cfg


class AmpContext:
    """Autocast + loss scaling for one device: bf16 if supported on CUDA, else fp16 + GradScaler."""

    def __init__(self, device: torch.device, precision: str = "auto"):
        self.device = device
        self.dtype: Optional[torch.dtype] = None
        if device.type == "cuda" and precision != "fp32":
            bf16_ok = torch.cuda.is_bf16_supported()
            self.dtype = torch.float16 if precision == "fp16" or not bf16_ok else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, params=None,
                 clip: float = 1.0) -> None:
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(optimizer)
        else:
            loss.backward()
        if clip and params is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()


def pick_device(name: Optional[str]) -> torch.device:
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FaceRefineError("--device cuda requested but CUDA is not available")
    return torch.device(name)


def stage_settings(cfg: dict, stage: str) -> dict:
    base = {"steps": 1000, "batch_size": 8, "lr": 2e-4, "log_every": 10, "checkpoint_every": 200,
            "seed": 0, "grad_clip": 1.0, "precision": "auto"}
    base.update(cfg.get("train", {}))
    base.update(cfg.get("stages", {}).get(stage, {}))
    return base


def load_faces(cfg: dict, log: Callable = print):
    data = cfg.get("data", {})
    size = int(cfg.get("resolution", 128))
    sources = resolve_sources(data.get("sources", ["compact"]))
    cache = data.get("cache") or f"runs/cache/faces{size}_{len(sources)}.npy"
    return build_cache(sources, size, Path(cache), data.get("framing", "auto"), log=log)


def train_stage(stage_name: str, cfg: dict, *, steps: Optional[int] = None, device: Optional[str] = None,
                out_dir: Optional[str] = None, resume: bool = True, max_minutes: Optional[float] = None,
                faces=None, probe: bool = False, log: Callable = print) -> dict:
    """Run (or continue) one stage; returns a summary with first/last losses and the exported files."""
    from .stages import STAGES, QualityLabels
    stage_name = canonical_stage(stage_name)
    settings = stage_settings(cfg, stage_name)
    if steps is not None:
        settings["steps"] = int(steps)
    dev = pick_device(device or cfg.get("device"))
    out = Path(out_dir or cfg.get("out_dir", "runs/facerefine")) / stage_name
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(settings["seed"]))

    stage = STAGES[stage_name](cfg, settings, dev, out.parent)
    amp = AmpContext(dev, settings["precision"])
    stage.amp = amp
    modules, optimizers = stage.modules(), stage.optimizers()

    if faces is None:
        faces = load_faces(cfg, log)
    batches = FaceBatches(faces, int(settings["batch_size"]), seed=int(settings["seed"]))
    metric = str(cfg.get("iqa_metric", "auto"))
    if metric not in ("", "none"):
        from ...core.score import canonical_name
        metric = canonical_name(metric)   # 'auto' = the default critic (face-iqa); labels are cached per metric
    label_file = Path(str(cfg.get("data", {}).get("cache") or out.parent / "faces")).with_suffix("")
    labels = QualityLabels(metric, label_file.with_name(f"{label_file.name}.quality-{metric}.npy"),
                           int(cfg.get("resolution", 128)), log) if metric not in ("", "none") else None
    stage.attach_data(faces, labels)
    degrade_cfg = DegradeConfig.from_dict(cfg.get("degrade"))
    degrade_gen = torch.Generator().manual_seed(int(settings["seed"]) + 1)

    start = 0
    ckpt = out / "last.safetensors"
    if resume and ckpt.is_file():
        start, rng, _ = load_checkpoint(ckpt, modules, optimizers)
        if "data" in rng:
            batches.set_state(rng["data"])
        if "degrade" in rng:
            degrade_gen.set_state(rng["degrade"])
        log(f"[{stage_name}] resumed from {ckpt} at step {start}")
    stage.on_start(start)
    probe_batch = None
    if probe:  # a fixed batch scored before and after (smoke tests: "the loss decreases")
        g = torch.Generator().manual_seed(12345)
        idx = torch.randperm(len(faces), generator=g)[: int(settings["batch_size"])]
        import numpy as np
        hq0 = torch.from_numpy(np.stack([faces[i] for i in idx.tolist()])).permute(0, 3, 1, 2).float() / 255
        lq0, _ = degrade(hq0, degrade_cfg, seed=54321)
        probe_batch = (hq0.to(dev), lq0.to(dev))
        probe_start = stage.probe(*probe_batch)

    def checkpoint(step: int) -> None:
        save_checkpoint(ckpt, step, modules, optimizers,
                        {"data": batches.state(), "degrade": degrade_gen.get_state()}, _public(cfg),
                        {"stage": stage_name})

    log_file = (out / "log.jsonl").open("a")
    t0 = time.time()
    history: list[dict] = []
    step = start
    total = int(settings["steps"])
    stopped = "done"
    try:
        while step < total:
            hq, indices = batches.next()
            lq, _ = degrade(hq, degrade_cfg, generator=degrade_gen)
            losses = stage.step(hq.to(dev), lq.to(dev), step, indices=indices)
            step += 1
            record = {"step": step, **{k: float(v) for k, v in losses.items()},
                      "time": round(time.time() - t0, 2)}
            history.append(record)
            if step % int(settings["log_every"]) == 0 or step == total:
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                log(f"[{stage_name}] step {step}/{total} " +
                    " ".join(f"{k}={v:.4f}" for k, v in record.items() if k not in ("step", "time")))
            if not all(math.isfinite(float(v)) for v in losses.values()):
                raise FaceRefineError(f"[{stage_name}] loss became non-finite at step {step}: {losses}")
            if step % int(settings["checkpoint_every"]) == 0:
                checkpoint(step)
                if labels is not None:
                    labels.save()
            if max_minutes and time.time() - t0 > max_minutes * 60:
                stopped = "time budget"
                break
    except KeyboardInterrupt:
        stopped = "interrupted"
    finally:
        log_file.close()
        if step > start:
            checkpoint(step)
    exported = [str(p) for p in stage.export()]
    probes = {}
    if probe_batch is not None:
        probes = {"probe_start": probe_start, "probe_end": stage.probe(*probe_batch)}
    log(f"[{stage_name}] {stopped} at step {step}; wrote {exported}")
    first = history[0] if history else {}
    last = history[-1] if history else {}
    return {"stage": stage_name, "step": step, "start_step": start, "stopped": stopped,
            "device": str(dev), "precision": str(amp.dtype or torch.float32), "checkpoint": str(ckpt),
            "exported": exported, "first_losses": first, "last_losses": last,
            "seconds": round(time.time() - t0, 1), "history": history, **probes}


def _public(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if not k.startswith("_")}
