"""Train the compact v2 default restorer (models/arch/iqpfr_v2.py) on CPU.

One run = one config (configs/compact_v2.json). Everything random is drawn from a generator seeded by
(seed, step), so a run resumed from its checkpoint continues bit-for-bit. Sizing and reasons:
docs/training.md.

Data: every training source in ../shared/data (ffhq256, stylegan256, utkface, London *training*
identities at 256 and at 512); held-out London identities are refused (lab.train.data.resolve_sources).
Each sample is a random patch of an aligned face, degraded on the fly by a random chain
blur -> downscale -> noise -> (JPEG) -> upscale -> (JPEG), sizes in the patch's own pixels, so a
512² crop at inference sees the same statistics as a 256² face here (it is fully convolutional).

Quality slider labels: a sample gets a quality value q (half of them q = 1, the rest uniform in
0..1); its target is ``smooth(HQ) + q * (HQ - smooth(HQ))``: q = 1 is the full HQ face, q = 0 the
face without its finest detail. docs/training.md shows the default critic's score rising with q.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ...models.arch.iqpfr_v2 import IQPFRv2, IQPFRv2Config
from .. import datasets
from .data import build_cache, resolve_sources
from .iqpfr import straight_through_forward

MAX_EXPORT_MB = 40.0


@dataclass
class V2TrainConfig:
    name: str = "facerefine-compact-v2"
    out_dir: str = "runs/compact_v2"
    # (source, aligned size, sampling weight): UTKFace chips are small and heavily compressed, so they are
    # drawn less often; London training identities also come at 512² (real detail at the crop's scale)
    sources: list = field(default_factory=lambda: [["ffhq256", 256, 0.35], ["stylegan256", 256, 0.3],
                                                   ["utkface", 256, 0.1], ["london-train", 256, 0.1],
                                                   ["london-train", 512, 0.15]])
    patch: int = 160
    batch_size: int = 16
    steps: int = 8000
    lr: float = 2e-3
    min_lr: float = 1e-4
    warmup: int = 200
    weight_decay: float = 1e-4
    ema: float = 0.999
    grad_weight: float = 0.5               # L1 on image gradients (sharp edges)
    smooth_sigma: float = 1.5              # quality-0 target: Gaussian of this sigma (256-px scale)
    q1_fraction: float = 0.5               # samples trained at quality 1
    clean_fraction: float = 0.05           # samples left undegraded (never damage a clean face)
    checkpoint_every: int = 200
    max_minutes: float = 150.0
    seed: int = 0
    threads: int = 2
    model: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: Optional[str], **overrides):
        """The config of a JSON file (its "description" ignored), overridden by the non-None ``overrides``."""
        raw = json.loads(Path(path).read_text()) if path else {}
        raw.update({k: v for k, v in overrides.items() if v is not None})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known - {"description"})
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}")
        return cls(**{k: v for k, v in raw.items() if k in known})

    def model_config(self) -> IQPFRv2Config:
        return IQPFRv2Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.model.items()})


# -- data ------------------------------------------------------------------------------------------
def source_paths(names: list[str]) -> list[Path]:
    root = datasets.shared_data_dir()
    out: list[Path] = []
    for name in names:
        if name == "london-train":
            split = datasets.london_split(root / "london")
            out += split["train_neutral"] + split["train_smiling"]
        elif name == "3dsk":  # high-resolution studio faces (female/, male/), aligned by their .tem templates
            out += resolve_sources([str(root / name / "female"), str(root / name / "male")])
        else:
            out += resolve_sources([str(root / name)])
    return resolve_sources([str(p) for p in out])  # refuses held-out London identities


def load_faces(cfg: V2TrainConfig, log=print) -> list[tuple[np.ndarray, float]]:
    """[(uint8 faces [N,S,S,3], weight)] for every configured source (aligned once into runs/cache)."""
    cache = Path(cfg.out_dir).parent / "cache"
    pools = []
    for name, size, weight in cfg.sources:
        faces = build_cache(source_paths([name]), int(size), cache / f"v2_{name}_{int(size)}.npy", log=log)
        pools.append((np.asarray(faces), float(weight)))
    return pools


def degrade_patch(hq: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 HxWx3 -> degraded uint8 (same size): blur, downscale, noise, JPEG, upscale, random order of JPEG."""
    import cv2
    h, w = hq.shape[:2]
    img = hq.astype(np.float32)
    if rng.random() < 0.8:
        sigma = rng.uniform(0.2, 4.5)
        img = cv2.GaussianBlur(img, (0, 0), sigmaX=sigma)
    scale = float(np.exp(rng.uniform(0.0, math.log(8.0)))) if rng.random() < 0.9 else 1.0
    small = (max(4, round(w / scale)), max(4, round(h / scale)))
    if scale > 1.0:
        img = cv2.resize(img, small, interpolation=cv2.INTER_AREA if rng.random() < 0.5 else cv2.INTER_LINEAR)
    if rng.random() < 0.7:
        img = img + rng.normal(0.0, rng.uniform(1.0, 12.0), img.shape).astype(np.float32)
    img = np.clip(img, 0, 255).round().astype(np.uint8)
    jpeg_low = rng.random() < 0.5
    quality = int(rng.uniform(25, 95)) if rng.random() < 0.85 else None

    def jpeg(x):
        ok, buf = cv2.imencode(".jpg", x, [cv2.IMWRITE_JPEG_QUALITY, quality])
        return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)

    if quality and jpeg_low:
        img = jpeg(img)
    if img.shape[:2] != (h, w):
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC if rng.random() < 0.7 else cv2.INTER_LINEAR)
    if quality and not jpeg_low:
        img = jpeg(img)
    return img


def make_batch(cfg: V2TrainConfig, pools: list, step: int):
    """Deterministic batch for ``step``: (lq, target, quality) float tensors, images in [-1, 1]."""
    import cv2
    rng = np.random.default_rng([cfg.seed, step])
    p = cfg.patch
    lqs, targets, qualities = [], [], []
    weights = np.array([w for _, w in pools], dtype=np.float64)
    for _ in range(cfg.batch_size):
        pool = pools[rng.choice(len(pools), p=weights / weights.sum())][0]
        face = pool[rng.integers(len(pool))]
        size = face.shape[0]
        y, x = rng.integers(0, size - p + 1, size=2)
        hq = np.ascontiguousarray(face[y:y + p, x:x + p])
        if rng.random() < 0.5:
            hq = np.ascontiguousarray(hq[:, ::-1])
        lq = hq if rng.random() < cfg.clean_fraction else degrade_patch(hq, rng)
        q = 1.0 if rng.random() < cfg.q1_fraction else float(rng.uniform(0.0, 1.0))
        sigma = cfg.smooth_sigma * size / 256
        hq_f = hq.astype(np.float32)
        smooth = cv2.GaussianBlur(hq_f, (0, 0), sigmaX=sigma)
        lqs.append(lq)
        targets.append(smooth + q * (hq_f - smooth))
        qualities.append(q)
    lq = torch.from_numpy(np.stack(lqs)).permute(0, 3, 1, 2).float() / 127.5 - 1
    target = torch.from_numpy(np.stack(targets)).permute(0, 3, 1, 2) / 127.5 - 1
    return lq, target, torch.tensor(qualities, dtype=torch.float32)


# -- training --------------------------------------------------------------------------------------
def charbonnier(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    return torch.sqrt((a - b) ** 2 + eps * eps).mean()


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def loss_fn(out: torch.Tensor, target: torch.Tensor, grad_weight: float) -> tuple[torch.Tensor, dict]:
    pix = charbonnier(out, target)
    gy_o, gx_o = image_gradients(out)
    gy_t, gx_t = image_gradients(target)
    grad = (gy_o - gy_t).abs().mean() + (gx_o - gx_t).abs().mean()
    return pix + grad_weight * grad, {"pix": float(pix.detach()), "grad": float(grad.detach())}


def lr_at(cfg: V2TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * t))


def save_checkpoint(path: Path, model, ema, opt, step: int, history: list) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
                "history": history}, tmp)
    os.replace(tmp, path)


def train(cfg: V2TrainConfig, log=print, stop_after: Optional[int] = None) -> dict:
    """Run (or resume) training; returns a summary. ``stop_after``: stop at this step (tests, resume)."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pools = load_faces(cfg, log)
    model = IQPFRv2(cfg.model_config())
    ema = IQPFRv2(cfg.model_config())
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    ckpt = out / "checkpoint.pt"
    step, history = 0, []
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step, history = int(state["step"]), list(state["history"])
        log(f"resumed at step {step}")
    (out / "config.json").write_text(json.dumps(cfg.__dict__, indent=1))
    end = min(cfg.steps, stop_after if stop_after is not None else cfg.steps)
    t0, seen_t0, deadline = time.time(), step, time.time() + cfg.max_minutes * 60
    window = []
    while step < end and time.time() < deadline:
        lq, target, quality = make_batch(cfg, pools, step)
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        restored, _ = straight_through_forward(model, lq, quality)
        loss, parts = loss_fn(restored, target, cfg.grad_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema, (1 + step) / (10 + step))
            for e, p in zip(ema.parameters(), model.parameters()):
                e.lerp_(p, 1 - decay)
        step += 1
        window.append(float(loss))
        if step % 50 == 0:
            rate = (step - seen_t0) * cfg.batch_size / (time.time() - t0)
            history.append({"step": step, "loss": float(np.mean(window)), **parts, "samples_per_s": rate,
                            "lr": lr_at(cfg, step - 1)})
            window = []
            log(f"step {step}/{cfg.steps} loss {history[-1]['loss']:.4f} pix {parts['pix']:.4f} "
                f"{rate:.1f} samples/s")
        if step % cfg.checkpoint_every == 0 or step == end:
            save_checkpoint(ckpt, model, ema, opt, step, history)
    save_checkpoint(ckpt, model, ema, opt, step, history)
    return {"step": step, "samples_seen": step * cfg.batch_size, "checkpoint": str(ckpt),
            "minutes_this_run": (time.time() - t0) / 60, "history_tail": history[-3:]}


def export(cfg: V2TrainConfig, dest: Optional[str] = None, max_megabytes: float = MAX_EXPORT_MB,
           model: Optional[IQPFRv2] = None) -> Path:
    """The EMA weights of the run's checkpoint -> fp16 safetensors (refuses files over ``max_megabytes``).
    ``model``: the architecture to fill (default: the config's)."""
    state = torch.load(Path(cfg.out_dir) / "checkpoint.pt", map_location="cpu", weights_only=True)
    model = model if model is not None else IQPFRv2(cfg.model_config())
    model.load_state_dict(state["ema"])
    dest = Path(dest) if dest else Path(cfg.out_dir) / f"{cfg.name}.safetensors"
    return model.save(dest, max_megabytes=max_megabytes)


def main(argv=None) -> None:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(Path(__file__).resolve().parents[2] / "configs" / "compact_v2.json"))
    ap.add_argument("--steps", type=int)
    ap.add_argument("--out-dir")
    ap.add_argument("--max-minutes", type=float)
    ap.add_argument("--export", nargs="?", const="", help="export the EMA weights (optional destination)")
    args = ap.parse_args(argv)
    cfg = V2TrainConfig.load(args.config, steps=args.steps, out_dir=args.out_dir, max_minutes=args.max_minutes)
    if args.export is not None:
        print(export(cfg, args.export or None))
        return
    print(json.dumps(train(cfg, log=lambda m: print(m, flush=True))))


if __name__ == "__main__":
    main()
