"""Can a restorer reuse a latent prior trained on another restorer's latent? (v3 fine-tuned from v2)

    python -m facerefine.lab.eval.prior_compat --restorers weights/facerefine_compact_v2.safetensors,NEW.safetensors

The prior's denoising-score-matching loss (lab/refine_training.py, evaluation only, fixed noise) on latents of
held-out London faces encoded by each restorer: the clean latent is the lookup of the HQ face, the condition
the encoder output of the LQ face (``degrade_patch``, v2's chain, seeded per face). A restorer whose loss stays
close to the one the prior was trained for can keep it; a much higher loss means the latent moved.
"""
from __future__ import annotations

import json

import numpy as np
import torch


def latents(model, hq: torch.Tensor, lq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean latent of the HQ faces, encoder condition of the LQ faces); faces [N,3,S,S] 0..1."""
    quality = torch.ones(hq.shape[0])
    with torch.no_grad():
        hq_feat, _ = model.encode(hq * 2 - 1)
        logits = model.logits(hq_feat, model.film(quality))
        clean = model.finish_quantize(model.code_features(logits.argmax(-1)), hq_feat)
        cond, _ = model.encode(lq * 2 - 1)
    return clean, cond.float()


def prior_loss(prior, clean: torch.Tensor, cond: torch.Tensor, repeats: int = 8) -> float:
    from ..refine_training import score_matching_step
    gen = torch.Generator().manual_seed(1234)
    return float(np.mean([score_matching_step(prior, None, clean, cond, generator=gen) for _ in range(repeats)]))


def run(restorers: list[str], prior_name: str = "facerefine-compact-v2-prior", faces: int = 24, size: int = 256,
        log=print) -> dict:
    from ...models.arch.iqpfr_v2 import IQPFRv2
    from ...models.arch.latent_prior import load_latent_prior
    from ...models.locate import resolve
    from ..train.compact_v2 import degrade_patch
    from .heldout import align_photos, heldout_photos
    prior = load_latent_prior(resolve(prior_name, "facerefine"), "cpu").float().eval()
    hq, _, paths = align_photos(heldout_photos()[:faces], size, "mtcnn", notes=[])
    u8 = (hq.permute(0, 2, 3, 1) * 255).round().byte().numpy()
    lq = torch.from_numpy(np.stack([degrade_patch(u8[i], np.random.default_rng([7, i])) for i in range(len(u8))]))
    lq = lq.permute(0, 3, 1, 2).float() / 255
    result = {"prior": prior_name, "faces": len(paths), "size": size, "loss": {}}
    for name in restorers:
        model = IQPFRv2.from_file(resolve(name, "facerefine")).float().eval()
        result["loss"][name] = prior_loss(prior, *latents(model, hq, lq))
        log(f"{name}: prior loss {result['loss'][name]:.4f}")
    return result


def main(argv=None) -> None:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--restorers", default="facerefine-compact-v2")
    ap.add_argument("--prior", default="facerefine-compact-v2-prior")
    ap.add_argument("--faces", type=int, default=24)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    print(json.dumps(run(args.restorers.split(","), args.prior, args.faces)))


if __name__ == "__main__":
    main()
