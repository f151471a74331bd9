"""Train the v3 default restorer: v2's architecture fine-tuned for detail that is still the same person (issue 25).

Starts from the shipped v2 weights (``init``) and trains, in legs that each resume bit-for-bit from
``out_dir/checkpoint.pt`` (kept outside git), with:
- degradations of the world (``lab/degrade_world.py``: two blur rounds, x1..x16 resize, colour/grey/Poisson
  noise, JPEG, H.264, ringing, old-photo damage), one whole family held out of training for the
  generalisation test;
- an identity-perceptual loss through the embedded dlib ResNet (CC0): L1 between intermediate features of the
  restored and the clean face's dlib chips, plus 1 - cos of their embeddings;
- a small spectral-norm patch discriminator on the face (non-saturating GAN loss) and, as GFPGAN does,
  component discriminators on the eyes (both eyes through one network, the right one mirrored) and the mouth;
- the v2 pixel + gradient loss at low weight (the quality slider's targets, as v2).

A batch is half whole faces (the face resized to the patch size: identity and components are defined) and half
random patches of 256² / 512² faces (detail at the scale of a 512² inference crop), as v2 drew them. The GAN
and component terms act on quality-1 samples only (the slider's lower values ask for less detail).

Everything random comes from generators seeded by (seed, step): a leg resumed from its checkpoint continues
bit-for-bit (tests/test_train_v3.py). ``python -m facerefine.lab.train.compact_v3 --config configs/compact_v3.json``;
``--export`` writes the EMA weights; docs/training.md logs each leg.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...models.arch.identity import FFHQ_TEMPLATE, DlibEmbedder, load_dlib
from ...models.arch.iqpfr_v2 import IQPFRv2
from . import compact_v2
from .compact_v2 import V2TrainConfig, charbonnier, image_gradients, load_faces, lr_at
from .iqpfr import straight_through_forward


@dataclass
class V3TrainConfig(V2TrainConfig):
    name: str = "facerefine-compact-v3"
    out_dir: str = "runs/compact_v3"
    init: Optional[str] = "facerefine-compact-v2"   # weights to start from (registry name or path); None: scratch
    steps: int = 6000
    lr: float = 2e-4
    min_lr: float = 2e-5
    warmup: int = 50
    d_lr: float = 2e-4
    whole_fraction: float = 0.5         # samples that are whole faces (identity + components defined)
    hold_out: list = field(default_factory=lambda: None)  # degradation families never drawn (None: the default)
    pixel_weight: float = 0.2
    grad_weight: float = 0.1
    id_feature_weight: float = 1.0
    id_embed_weight: float = 0.5
    gan_weight: float = 0.05
    component_weight: float = 0.1
    feature_match_weight: float = 0.0   # L1 between the discriminators' features of output and HQ (pix2pixHD)
    gan_ramp: int = 0                   # steps over which the GAN and component weights rise from 0 (0: at once)
    d_channels: int = 32
    d_norm: str = "spectral"            # spectral: spectral norm on every layer | r1: none, R1 penalty on reals
    r1_gamma: float = 1.0               # R1 weight (d_norm "r1"), applied every r1_every steps (lazy, scaled)
    r1_every: int = 4
    keep_tone: bool = True              # an old photo's grey / sepia / yellowed tone is kept in the target
    project_fraction: float = 0.0       # samples degraded by v2's own chain (lab/train/compact_v2.degrade_patch)
    device: str = "cpu"                 # cuda: bf16 autocast (lab/gpu/train_v3.sh)
    workers: int = 0                    # processes preparing batches ahead (same batches as inline)


# -- data ------------------------------------------------------------------------------------------
class MixedDegrade:
    """The world pipeline, or with probability ``project_fraction`` v2's own chain (what the benchmark's
    presets resemble): one ``degrade(hq, rng) -> (lq, steps)`` for make_batch."""

    def __init__(self, world, project_fraction: float):
        self.world, self.project_fraction = world, float(project_fraction)

    def degrade(self, hq: np.ndarray, rng: np.random.Generator):
        if self.project_fraction and rng.random() < self.project_fraction:
            return compact_v2.degrade_patch(hq, rng), []
        return self.world.degrade(hq, rng)


def degrader(cfg: V3TrainConfig):
    from ..degrade_world import DEFAULT_HOLD_OUT, DegradeWorld
    world = DegradeWorld(hold_out=tuple(DEFAULT_HOLD_OUT if cfg.hold_out is None else cfg.hold_out))
    return MixedDegrade(world, cfg.project_fraction) if cfg.project_fraction else world


def make_batch(cfg: V3TrainConfig, pools: list, step: int, degrade):
    """Deterministic batch for ``step``: (lq, target, hq, quality, whole) tensors, images in [-1, 1]."""
    import cv2
    rng = np.random.default_rng([cfg.seed, step, 3])
    p = cfg.patch
    weights = np.array([w for _, w in pools], dtype=np.float64)
    lqs, targets, hqs, qualities, wholes = [], [], [], [], []
    for i in range(cfg.batch_size):
        whole = i < round(cfg.batch_size * cfg.whole_fraction)
        face = (pool := pools[rng.choice(len(pools), p=weights / weights.sum())][0])[rng.integers(len(pool))]
        size = face.shape[0]
        if whole:
            hq = cv2.resize(face, (p, p), interpolation=cv2.INTER_AREA)
        else:
            y, x = rng.integers(0, size - p + 1, size=2)
            hq = np.ascontiguousarray(face[y:y + p, x:x + p])
        if rng.random() < 0.5:
            hq = np.ascontiguousarray(hq[:, ::-1])
        lq, steps = (hq, []) if rng.random() < cfg.clean_fraction else degrade.degrade(hq, rng)
        q = 1.0 if whole or rng.random() < cfg.q1_fraction else float(rng.uniform(0.0, 1.0))
        hq_f = hq.astype(np.float32)
        if cfg.keep_tone and any(s.get("step") in TONES for s in steps):
            hq_f = tone_like(hq_f, lq)
        smooth = cv2.GaussianBlur(hq_f, (0, 0), sigmaX=cfg.smooth_sigma * (p if whole else size) / 256)
        lqs.append(lq)
        hqs.append(hq_f)
        targets.append(smooth + q * (hq_f - smooth))
        qualities.append(q)
        wholes.append(whole)
    to_t = lambda a: torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2).float() / 127.5 - 1  # noqa: E731
    return to_t(lqs), to_t(targets), to_t(hqs), torch.tensor(qualities), torch.tensor(wholes)


TONES = ("grey", "sepia", "yellowed")  # old_photo steps that change colour on purpose


def tone_like(hq: np.ndarray, lq: np.ndarray) -> np.ndarray:
    """The clean face in the toned photo's colour: its luma times the LQ's mean colour cast (grey: 1, 1, 1).
    A restorer asked for the untoned face learns to colourise grey and sepia photos (run B did)."""
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    lq_f = lq.astype(np.float32)
    cast = lq_f.reshape(-1, 3).mean(axis=0) / max(float((lq_f @ luma).mean()), 1.0)
    return np.clip((hq @ luma)[..., None] * cast, 0, 255).astype(np.float32)


# -- networks --------------------------------------------------------------------------------------
class PatchDiscriminator(nn.Module):
    """PatchGAN: [N,3,H,W] in [-1,1] -> [N,1,H/2^layers,W/2^layers] real/fake logits. With spectral norm on
    every layer (probe A, run B) its logits could hardly move and it stayed at chance; ``spectral=False`` is
    the plain network for R1."""

    def __init__(self, ch: int = 32, layers: int = 3, spectral: bool = True):
        super().__init__()
        sn = nn.utils.spectral_norm if spectral else (lambda m: m)
        blocks, cin = [], 3
        for i in range(layers):
            cout = ch * 2 ** i
            blocks += [sn(nn.Conv2d(cin, cout, 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True)]
            cin = cout
        blocks.append(sn(nn.Conv2d(cin, 1, 3, 1, 1)))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The activations after every hidden layer (the feature-matching taps)."""
        taps = []
        for layer in self.net[:-1]:
            x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                taps.append(x)
        return taps


def relative_l1(got: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
    """Mean over feature maps of L1(got, ref) / mean|ref| (the feature losses' common scale)."""
    return sum((a - b).abs().mean() / (b.abs().mean() + 1e-6) for a, b in zip(got, ref)) / len(ref)


def feature_match(d: PatchDiscriminator, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean over the taps of L1(features(fake), features(real)) / mean|features(real)|: a perceptual anchor
    learned by the discriminator itself (no VGG weights can be downloaded here). No gradient reaches ``real``.
    One pass over both: spectral norm's power iteration moves the weights at every forward in training mode."""
    n = fake.shape[0]
    taps = d.features(torch.cat([fake, real.detach()]))
    return relative_l1([t[:n] for t in taps], [t[n:].detach() for t in taps])


class Discriminators(nn.Module):
    """The face discriminator and the eye / mouth component discriminators."""

    def __init__(self, ch: int = 32, spectral: bool = True):
        super().__init__()
        self.face = PatchDiscriminator(ch, 3, spectral)
        self.eye = PatchDiscriminator(ch, 2, spectral)
        self.mouth = PatchDiscriminator(ch, 2, spectral)


def component_boxes(size: int) -> dict[str, tuple]:
    """(y0, y1, x0, x1) of the left eye, right eye and mouth in an FFHQ-framed face of side ``size``."""
    t = FFHQ_TEMPLATE * size
    eye = round(0.2 * size / 2) * 2
    boxes = {}
    for name, (x, y) in (("eye_l", t[0]), ("eye_r", t[1])):
        boxes[name] = (round(float(y)) - eye // 2, round(float(y)) + eye // 2,
                       round(float(x)) - eye // 2, round(float(x)) + eye // 2)
    mx, my = (t[3] + t[4]) / 2
    mw, mh = round(0.32 * size / 2) * 2, round(0.16 * size / 2) * 2
    boxes["mouth"] = (round(float(my)) - mh // 2, round(float(my)) + mh // 2,
                      round(float(mx)) - mw // 2, round(float(mx)) + mw // 2)
    return boxes


def components(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(eyes [2N,3,e,e] with the right eye mirrored, mouths [N,3,h,w]) of whole faces."""
    b = component_boxes(x.shape[-1])
    crop = lambda k: x[..., b[k][0]:b[k][1], b[k][2]:b[k][3]]  # noqa: E731
    return torch.cat([crop("eye_l"), crop("eye_r").flip(-1)]), crop("mouth")


# -- identity-perceptual loss ----------------------------------------------------------------------
FEATURE_TAPS = (2, 6, 10)  # dlib ResNet blocks after which features are compared (fine .. coarse)


def dlib_features(embedder: DlibEmbedder, faces01: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Intermediate features at FEATURE_TAPS and the unit embedding of FFHQ-framed faces (0..1)."""
    net = embedder.net
    x = (embedder.chips(faces01) - net.rgb_mean) * (255.0 / 256.0)
    x = F.max_pool2d(F.relu(net.stem(x)), 3, 2)
    feats = []
    for i, block in enumerate(net.blocks):
        x = block(x)
        if i in FEATURE_TAPS:
            feats.append(x)
    return feats, F.normalize(net.fc(x.mean(dim=(2, 3))), dim=1)


def identity_loss(embedder, restored: torch.Tensor, hq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(feature L1, 1 - cos of embeddings), both means over the batch; images in [-1, 1]."""
    with torch.no_grad():
        feats_hq, emb_hq = dlib_features(embedder, (hq + 1) / 2)
    feats, emb = dlib_features(embedder, ((restored + 1) / 2).clamp(0, 1))
    feature = relative_l1(feats, feats_hq)
    return feature, (1 - (emb * emb_hq).sum(dim=1)).mean()


# -- training --------------------------------------------------------------------------------------
def gan_ramp(cfg: V3TrainConfig, step: int) -> float:
    """Factor on the GAN and component weights: rises linearly from 0 to 1 over cfg.gan_ramp steps."""
    return 1.0 if cfg.gan_ramp <= 0 else min(1.0, step / cfg.gan_ramp)


def generator_losses(cfg: V3TrainConfig, out, target, hq, quality, whole, disc: Discriminators, embedder,
                     ramp: float = 1.0):
    pix = charbonnier(out, target)
    (gy_o, gx_o), (gy_t, gx_t) = image_gradients(out), image_gradients(target)
    grad = (gy_o - gy_t).abs().mean() + (gx_o - gx_t).abs().mean()
    parts = {"pix": pix, "grad": grad}
    sharp = quality >= 1.0
    if sharp.any() and cfg.gan_weight:
        parts["gan"] = F.softplus(-disc.face(out[sharp])).mean()
    if sharp.any() and cfg.feature_match_weight:
        parts["fm"] = feature_match(disc.face, out[sharp], hq[sharp])
    w = whole & sharp
    if w.any() and (cfg.id_feature_weight or cfg.id_embed_weight):
        parts["id_feat"], parts["id_embed"] = identity_loss(embedder, out[w], hq[w])
    if w.any() and cfg.component_weight:
        eyes, mouths = components(out[w])
        parts["comp"] = F.softplus(-disc.eye(eyes)).mean() + F.softplus(-disc.mouth(mouths)).mean()
        if cfg.feature_match_weight:
            (eyes_r, mouths_r) = components(hq[w])
            parts["fm"] = parts.get("fm", 0) + feature_match(disc.eye, eyes, eyes_r) \
                + feature_match(disc.mouth, mouths, mouths_r)
    weights = {"pix": cfg.pixel_weight, "grad": cfg.grad_weight, "gan": cfg.gan_weight * ramp,
               "id_feat": cfg.id_feature_weight, "id_embed": cfg.id_embed_weight,
               "comp": cfg.component_weight * ramp, "fm": cfg.feature_match_weight}
    total = sum(weights[k] * v for k, v in parts.items())
    return total, {k: float(v.detach()) for k, v in parts.items()}


def r1_penalty(disc: Discriminators, real: torch.Tensor) -> torch.Tensor:
    """Mean squared gradient norm of the face discriminator's real logits at the real images (R1)."""
    real = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(disc.face(real).sum(), real, create_graph=True)
    return grad.pow(2).sum(dim=(1, 2, 3)).mean()


def discriminator_loss(disc: Discriminators, out, hq, quality, whole) -> torch.Tensor:
    """Non-saturating loss of the three discriminators on quality-1 samples (4.16 = all at chance)."""
    sharp = quality >= 1.0
    fake, real = out.detach()[sharp], hq[sharp]
    loss = F.softplus(disc.face(fake)).mean() + F.softplus(-disc.face(real)).mean() if sharp.any() \
        else out.new_zeros(())
    w = (whole & sharp)[sharp]
    if w.any():
        (eyes_f, mouth_f), (eyes_r, mouth_r) = components(fake[w]), components(real[w])
        loss = loss + F.softplus(disc.eye(eyes_f)).mean() + F.softplus(-disc.eye(eyes_r)).mean()
        loss = loss + F.softplus(disc.mouth(mouth_f)).mean() + F.softplus(-disc.mouth(mouth_r)).mean()
    return loss


def initial_generator(cfg: V3TrainConfig) -> IQPFRv2:
    """v2's weights (fp16 file -> float32) with their own config, or a fresh model of cfg.model."""
    if cfg.init:
        from ...models.locate import resolve
        return IQPFRv2.from_file(resolve(cfg.init, "facerefine")).float()
    return IQPFRv2(cfg.model_config())


_WORKER: dict = {}


def _worker_init(cfg, pools):
    _WORKER.update(cfg=cfg, pools=pools, degrade=degrader(cfg))


def _worker_batch(step: int):
    return make_batch(_WORKER["cfg"], _WORKER["pools"], step, _WORKER["degrade"])


def batches(cfg: V3TrainConfig, pools: list, first: int, end: int):
    """make_batch for each step from ``first`` to ``end``, inline or in ``cfg.workers`` forked processes.
    At most 2 batches per worker are prepared ahead: ``Pool.imap`` has no back-pressure, and the batches it
    piled up in shared memory filled /dev/shm and got the first leg-2 run OOM-killed."""
    if cfg.workers <= 0:
        degrade = degrader(cfg)
        yield from (make_batch(cfg, pools, step, degrade) for step in range(first, end))
        return
    import multiprocessing
    from collections import deque
    with multiprocessing.get_context("fork").Pool(cfg.workers, _worker_init, (cfg, pools)) as pool:
        pending: deque = deque()
        for step in range(first, end):
            while len(pending) < 2 * cfg.workers and step + len(pending) < end:
                pending.append(pool.apply_async(_worker_batch, (step + len(pending),)))
            yield pending.popleft().get()


def save_checkpoint(path: Path, **state) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(cfg: V3TrainConfig, log=print, stop_after: Optional[int] = None, embedder=None) -> dict:
    """Run (or resume) a leg; returns a summary. ``stop_after``: stop at this step (tests, resume)."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pools = load_faces(cfg, log)
    device = torch.device(cfg.device)
    embedder = (embedder if embedder is not None else load_dlib()).to(device)
    embedder.requires_grad_(False)
    model = initial_generator(cfg).to(device)
    ema = initial_generator(cfg).to(device)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    if cfg.d_norm not in ("spectral", "r1"):
        raise ValueError(f"d_norm must be 'spectral' or 'r1', got {cfg.d_norm!r}")
    disc = Discriminators(cfg.d_channels, spectral=cfg.d_norm == "spectral").to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.d_lr, betas=(0.5, 0.99))
    ckpt = out_dir / "checkpoint.pt"
    step, history = 0, []
    if ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        for module, key in ((model, "model"), (ema, "ema"), (disc, "disc"), (opt, "opt"), (opt_d, "opt_d")):
            module.load_state_dict(state[key])
        step, history = int(state["step"]), list(state["history"])
        log(f"resumed at step {step}")
    (out_dir / "config.json").write_text(json.dumps(cfg.__dict__, indent=1))
    end = min(cfg.steps, stop_after if stop_after is not None else cfg.steps)
    t0, seen_t0, deadline = time.time(), step, time.time() + cfg.max_minutes * 60
    window: dict[str, list] = {}

    def checkpoint():
        save_checkpoint(ckpt, model=model.state_dict(), ema=ema.state_dict(), disc=disc.state_dict(),
                        opt=opt.state_dict(), opt_d=opt_d.state_dict(), step=step, history=history)

    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    for batch in batches(cfg, pools, step, end):
        if time.time() >= deadline:
            break
        lq, target, hq, quality, whole = (t.to(device, non_blocking=True) for t in batch)
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        disc.requires_grad_(False)
        with autocast:
            out, _ = straight_through_forward(model, lq, quality)
            loss, parts = generator_losses(cfg, out, target, hq, quality, whole, disc, embedder,
                                           gan_ramp(cfg, step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if cfg.gan_weight or cfg.component_weight or cfg.feature_match_weight:
            disc.requires_grad_(True)
            with autocast:
                d_loss = discriminator_loss(disc, out, hq, quality, whole)
                r1 = r1_penalty(disc, hq[quality >= 1.0]) if cfg.d_norm == "r1" and step % cfg.r1_every == 0 \
                    and bool((quality >= 1.0).any()) else d_loss.new_zeros(())
            opt_d.zero_grad(set_to_none=True)
            (d_loss + cfg.r1_gamma / 2 * cfg.r1_every * r1).backward()
            opt_d.step()
        else:
            d_loss = torch.zeros(())
        with torch.no_grad():
            decay = min(cfg.ema, (1 + step) / (10 + step))
            for e, p in zip(ema.parameters(), model.parameters()):
                e.lerp_(p, 1 - decay)
        step += 1
        for k, v in {**parts, "loss": float(loss.detach()), "d": float(d_loss.detach())}.items():
            window.setdefault(k, []).append(v)
        if step % 25 == 0:
            rate = (step - seen_t0) * cfg.batch_size / (time.time() - t0)
            history.append({"step": step, **{k: float(np.mean(v)) for k, v in window.items()},
                            "samples_per_s": rate, "lr": lr_at(cfg, step - 1)})
            window = {}
            log(f"step {step}/{cfg.steps} " + " ".join(f"{k} {v:.4f}" for k, v in history[-1].items()
                                                       if k not in ("step", "lr")))
        if step % cfg.checkpoint_every == 0 or step == end:
            checkpoint()
    checkpoint()
    return {"step": step, "samples_seen": step * cfg.batch_size, "checkpoint": str(ckpt),
            "minutes_this_run": (time.time() - t0) / 60, "history_tail": history[-2:]}


def export(cfg: V3TrainConfig, dest: Optional[str] = None) -> Path:
    """The EMA weights of the leg's checkpoint -> fp16 safetensors (the restart point and the candidate),
    in the architecture of the model the leg started from."""
    return compact_v2.export(cfg, dest, model=initial_generator(cfg))


def main(argv=None) -> None:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(Path(__file__).resolve().parents[2] / "configs" / "compact_v3.json"))
    ap.add_argument("--steps", type=int)
    ap.add_argument("--out-dir")
    ap.add_argument("--max-minutes", type=float)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--device")
    ap.add_argument("--workers", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--patch", type=int)
    ap.add_argument("--export", nargs="?", const="", help="export the EMA weights (optional destination)")
    args = ap.parse_args(argv)
    cfg = V3TrainConfig.load(args.config, steps=args.steps, out_dir=args.out_dir, max_minutes=args.max_minutes,
                             threads=args.threads, device=args.device, workers=args.workers,
                             batch_size=args.batch_size, patch=args.patch)
    if args.export is not None:
        print(export(cfg, args.export or None))
        return
    print(json.dumps(train(cfg, log=lambda m: print(m, flush=True))))


if __name__ == "__main__":
    main()
