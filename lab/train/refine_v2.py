"""Latent prior and Identity Recovery Network for the embedded restorer IQPFR v2 (issue 15 item 3).

CPU recipe in three commands, each bounded in wall time:

    python -m facerefine.lab.train.refine_v2 cache    --minutes 20   # encode the training faces ONCE
    python -m facerefine.lab.train.refine_v2 prior    --minutes 20   # score model on cached latents
    python -m facerefine.lab.train.refine_v2 identity --minutes 5    # IRN on cached embeddings

Faces: London TRAINING identities (``lab.datasets.london_split``; the held-out ones are refused by
``lab.train.compact_v2.source_paths``) at 512² and 256², ffhq256 and stylegan256 at 256², the aligned caches that
``lab.train.compact_v2`` builds (``runs/cache/v2_*.npy``). Each face is degraded once with v2's own training
degradation (``lab.train.compact_v2.degrade_patch``, seeded per face).

What is cached per face (v2's latent grid is crop/16: 16² at 256, 32² at 512):

- ``cond``: the degraded latent (v2's encoder output for the LQ face) [32,h,w], float32: its values are
  heavy-tailed (|x| up to ~1e5), so both models read it through ``asinh`` (``cond_transform``);
- ``lookup``: the lookup latent of the LQ face [64,h,w] (what refine starts from);
- ``clean``: the clean latent. v2 decodes from the *input's* skips (``out = x + correction``), so the HQ
  face's own lookup latent, decoded with the degraded face's skips, is no clean target (measured on 8 London
  training faces: 29.4 dB vs 31.2 dB for the lookup latent). The clean latent is therefore the latent that the
  decoder, with the degraded face's skips, turns into the HQ face: found by ``--invert-steps`` Adam steps on the
  pixel MSE from the lookup latent (the best step per face is kept);
- ``hq_emb`` / ``lq_emb``: the identity guide's unit embeddings of the HQ and LQ faces (dlib's embedded ResNet,
  the guide when ArcFace is absent), the IRN's target and input.
"""
from __future__ import annotations

import argparse
import json
import time
import zlib
from pathlib import Path

import numpy as np
import torch

OUT = Path("runs/refine_v2")
PRIOR_FILE = "facerefine_compact_v2_prior.safetensors"
IRN_FILE = "facerefine_compact_v2_identity_dlib.safetensors"
# (source, crop size): interleaved so that a run cut by its time budget still has every source
SOURCES = (("london-train", 512), ("ffhq256", 256), ("stylegan256", 256), ("london-train", 256))


def load_restorer(path: str = "weights/facerefine_compact_v2.safetensors"):
    from ...models.arch.iqpfr_v2 import IQPFRv2
    model = IQPFRv2.from_file(path).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _faces(name: str, size: int) -> np.ndarray:
    from ..train.data import build_cache
    from .compact_v2 import source_paths
    return build_cache(source_paths([name]), size, Path("runs/cache") / f"v2_{name}_{size}.npy")


def _to_tensor(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float() / 255


def encode_batch(model, embedder, hq: torch.Tensor, lq: torch.Tensor, invert_steps: int, lr: float) -> dict:
    """Cache entries (see the module doc) of one batch of HQ/LQ faces [N,3,S,S] 0..1."""
    n = hq.shape[0]
    quality = torch.ones(n)
    with torch.no_grad():
        cond, skips = model.encode(lq * 2 - 1)
        skips = model.with_quality(skips, quality)
        logits = model.logits(cond, model.film(quality))
        z_lookup = model.finish_quantize(model.code_features(logits.argmax(-1)), cond)
        hq_emb, lq_emb = embedder(hq), embedder(lq)
    target = hq * 2 - 1
    z = z_lookup.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    best, best_err = z_lookup.clone(), torch.full((n,), float("inf"))
    first_err = None
    for step in range(invert_steps + 1):
        with torch.enable_grad():
            err = (model.decode(z, skips, 0.5) - target).pow(2).mean(dim=(1, 2, 3))
            if first_err is None:
                first_err = err.detach().clone()
            better = err.detach() < best_err
            best[better] = z.detach()[better]
            best_err = torch.where(better, err.detach(), best_err)
            if step == invert_steps:
                break
            opt.zero_grad()
            err.sum().backward()
            opt.step()
    psnr = lambda e: (10 * torch.log10(4 / e.clamp_min(1e-10))).tolist()  # range [-1,1]: peak 2
    # cond stays float32: v2's encoder output reaches 1e5 in places, beyond fp16
    return {"cond": cond.float(), "lookup": z_lookup.half(), "clean": best.half(), "hq_emb": hq_emb.half(),
            "lq_emb": lq_emb.half(), "psnr_lookup": psnr(first_err), "psnr_clean": psnr(best_err)}


def cmd_cache(args) -> None:
    from ...models.arch.identity import load_dlib
    from .compact_v2 import degrade_patch
    torch.set_num_threads(args.threads)
    model = load_restorer(args.restorer)
    embedder = load_dlib("dlib-face-recognition")
    pools = {src: _faces(*src) for src in SOURCES}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups: dict = {}
    cursor = {src: 0 for src in SOURCES}
    t0 = time.time()
    done = 0
    while time.time() - t0 < args.minutes * 60:
        progressed = False
        for src in SOURCES:
            faces, start = pools[src], cursor[src]
            limit = min(len(faces), args.max_per_source)
            if start >= limit or time.time() - t0 >= args.minutes * 60:
                continue
            stop = min(start + args.batch, limit)
            hq_np = np.stack([faces[i] for i in range(start, stop)])
            lq_np = np.stack([degrade_patch(hq_np[j], np.random.default_rng(
                [args.seed, zlib.crc32(src[0].encode()), src[1], start + j])) for j in range(len(hq_np))])
            entry = encode_batch(model, embedder, _to_tensor(hq_np), _to_tensor(lq_np), args.invert_steps,
                                 args.invert_lr)
            group = groups.setdefault(src[1], {})
            for k, v in entry.items():
                group.setdefault(k, []).append(v if isinstance(v, torch.Tensor) else torch.tensor(v))
            group.setdefault("source", []).extend([src[0]] * len(hq_np))
            cursor[src] = stop
            done += len(hq_np)
            progressed = True
            gain = np.mean(entry["psnr_clean"]) - np.mean(entry["psnr_lookup"])
            print(f"{done} faces, {time.time() - t0:.0f}s ({(time.time() - t0) / done:.2f} s/face); "
                  f"{src[0]}@{src[1]} clean-latent gain {gain:+.2f} dB", flush=True)
        if not progressed:
            break
        _save_cache(groups, out_dir / "cache.pt", args)
    _save_cache(groups, out_dir / "cache.pt", args)


def _save_cache(groups: dict, path: Path, args) -> None:
    data = {size: {k: (torch.cat(v) if k != "source" else list(v)) for k, v in g.items()}
            for size, g in groups.items()}
    data["meta"] = {"invert_steps": args.invert_steps, "invert_lr": args.invert_lr, "seed": args.seed,
                    "restorer": args.restorer}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(data, tmp)
    tmp.replace(path)


def _split(n: int, val_fraction: float = 0.1):
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(n, generator=g)
    k = max(1, int(round(n * val_fraction)))
    return perm[k:], perm[:k]


def cmd_prior(args) -> None:
    from ...models.arch.latent_prior import LatentPriorConfig, LatentScoreModel, save_latent_prior
    from ..refine_training import score_matching_step
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cache = torch.load(Path(args.out) / "cache.pt", weights_only=True)
    sizes = [s for s in cache if s != "meta"]
    cfg = LatentPriorConfig(latent_channels=64, cond_channels=32, latent_size=args.latent_size,
                            hidden=args.hidden, depth=args.depth, heads=4, restorer_arch="IQPFRv2",
                            position="interpolate", cond_transform="asinh")
    model = LatentScoreModel(cfg)
    def pooled(key):  # every cell of every face, whatever its grid: [1, C, cells, 1]
        return torch.cat([cache[s][key].float().transpose(0, 1).flatten(1) for s in sizes], dim=1)[None, :, :, None]
    model.fit_statistics(pooled("clean"), pooled("cond"))
    splits = {s: _split(len(cache[s]["clean"])) for s in sizes}
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(args.seed)
    print(f"prior: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; train faces "
          + ", ".join(f"{len(splits[s][0])} at {s}px" for s in sizes), flush=True)

    def val_loss() -> float:
        losses = []
        for s in sizes:
            idx = splits[s][1]
            vg = torch.Generator().manual_seed(1234)
            losses.append(score_matching_step(model, None, cache[s]["clean"][idx], cache[s]["cond"][idx],
                                              generator=vg))
        return float(np.mean(losses))

    # the share of steps per grid size follows the tokens it offers (a 32² grid costs ~4x a 16² one)
    weights = np.array([len(splits[s][0]) for s in sizes], dtype=float)
    weights /= weights.sum()
    t0, step, history = time.time(), 0, []
    first_val = val_loss()
    print(f"step 0 val {first_val:.4f}", flush=True)
    rng = np.random.default_rng(args.seed)
    while time.time() - t0 < args.minutes * 60:
        s = sizes[int(rng.choice(len(sizes), p=weights))]
        train_idx = splits[s][0]
        bs = args.batch if int(s) <= 256 else max(2, args.batch // 4)
        idx = train_idx[torch.randint(len(train_idx), (bs,), generator=gen)]
        lr = args.lr * min(1.0, (step + 1) / 50)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = score_matching_step(model, opt, cache[s]["clean"][idx], cache[s]["cond"][idx],
                                   cond_dropout=0.1, generator=gen)
        history.append(loss)
        step += 1
        if step % 100 == 0:
            print(f"step {step} {time.time() - t0:.0f}s train {np.mean(history[-100:]):.4f} "
                  f"({step / (time.time() - t0):.1f} steps/s)", flush=True)
    last_val = val_loss()
    print(f"done: {step} steps in {time.time() - t0:.0f}s; val loss {first_val:.4f} -> {last_val:.4f}", flush=True)
    out = save_latent_prior(model.half(), Path(args.out) / PRIOR_FILE)
    (Path(args.out) / "prior_train.json").write_text(json.dumps(
        {"steps": step, "seconds": time.time() - t0, "val_before": first_val, "val_after": last_val,
         "config": json.loads(cfg.to_json())}, indent=1))
    print(out)


def cmd_identity(args) -> None:
    from ...models.arch.identity import IdentityModel, IdentityRecoveryNetwork, RecoveryConfig, save_identity_recovery
    from ..refine_training import identity_recovery_embedding_step
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cache = torch.load(Path(args.out) / "cache.pt", weights_only=True)
    sizes = [s for s in cache if s != "meta"]
    irn = IdentityRecoveryNetwork(RecoveryConfig(cond_channels=32, latent_size=32, hidden=args.hidden,
                                                 embed_dim=128, cond_transform="asinh"))
    opt = torch.optim.AdamW(irn.parameters(), lr=args.lr, weight_decay=1e-3)
    splits = {s: _split(len(cache[s]["hq_emb"])) for s in sizes}
    gen = torch.Generator().manual_seed(args.seed)

    def evaluate() -> dict:
        out = {}
        for s in sizes:
            idx = splits[s][1]
            r = identity_recovery_embedding_step(irn, None, cache[s]["lq_emb"][idx], cache[s]["hq_emb"][idx],
                                                 cache[s]["cond"][idx])
            out[str(s)] = {"lq_cos": round(r["lq_similarity"], 4),
                           "irn_cos": round(1 - r["identity_recovery"], 4), "faces": len(idx)}
        return out

    before = evaluate()
    print("val before", before, flush=True)
    t0, step = time.time(), 0
    while time.time() - t0 < args.minutes * 60 and step < args.steps:
        s = sizes[step % len(sizes)]
        idx = splits[s][0][torch.randint(len(splits[s][0]), (args.batch,), generator=gen)]
        identity_recovery_embedding_step(irn, opt, cache[s]["lq_emb"][idx], cache[s]["hq_emb"][idx],
                                         cache[s]["cond"][idx])
        step += 1
    after = evaluate()
    print(f"done: {step} steps in {time.time() - t0:.0f}s; val after {after}", flush=True)
    irn = irn.half()
    out = save_identity_recovery(IdentityModel(torch.nn.Identity(), irn, None, name="dlib"),
                                 Path(args.out) / IRN_FILE)
    (Path(args.out) / "identity_train.json").write_text(json.dumps(
        {"steps": step, "seconds": time.time() - t0, "val_before": before, "val_after": after}, indent=1))
    print(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m facerefine.lab.train.refine_v2", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("cache", "prior", "identity"))
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--restorer", default="weights/facerefine_compact_v2.safetensors")
    p.add_argument("--minutes", type=float, default=20.0, help="wall-time budget of this command")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-per-source", type=int, default=100_000)
    p.add_argument("--invert-steps", type=int, default=4)
    p.add_argument("--invert-lr", type=float, default=0.05)
    p.add_argument("--latent-size", type=int, default=16, help="prior: learned position grid (resized at run time)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--steps", type=int, default=1_000_000)
    args = p.parse_args(argv)
    {"cache": cmd_cache, "prior": cmd_prior, "identity": cmd_identity}[args.command](args)


if __name__ == "__main__":
    main()
