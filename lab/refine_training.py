"""Training steps for the refine models (the ``train`` CLI builds its stages on these).

- ``score_matching_step``: denoising score matching (EDM loss) of the latent prior on clean latents,
  conditioned on the degraded latents of the same faces.
- ``identity_recovery_step``: the Identity Recovery Network regresses the clean face's ArcFace
  embedding from the degraded face; with a decoder it also trains the latent mask so that a masked
  identity update of the latent brings the decoded face closer to the clean face.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F


def score_matching_step(model, optimizer: Optional[torch.optim.Optimizer], clean_latents: torch.Tensor,
                        degraded_latents: torch.Tensor, *, p_mean: float = -1.2, p_std: float = 1.2,
                        cond_dropout: float = 0.0, generator: Optional[torch.Generator] = None) -> float:
    """One EDM denoising-score-matching step; returns the loss. ``optimizer=None`` only evaluates.

    Latents are in the restorer's units; the model's stored statistics standardise them
    (call ``model.fit_statistics`` once on a sample of the training set first).
    """
    device = next(model.parameters()).device
    x = model.normalize(clean_latents.float().to(device).clone())
    cond = model.normalize_cond(degraded_latents.float().to(device).clone())
    n = x.shape[0]
    if cond_dropout > 0:
        keep = (torch.rand(n, 1, 1, 1, generator=generator) >= cond_dropout).to(device)
        cond = cond * keep
    sigma = (torch.randn(n, generator=generator) * p_std + p_mean).exp().to(device)
    noise = torch.randn(x.shape, generator=generator).to(device)
    sd = model.config.sigma_data
    weight = (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2
    model.train(optimizer is not None)
    with torch.set_grad_enabled(optimizer is not None):
        denoised = model(x + sigma.view(-1, 1, 1, 1) * noise, sigma, cond)
        loss = (weight.view(-1, 1, 1, 1) * (denoised - x) ** 2).mean()
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
    model.eval()
    return float(loss.detach())


def identity_recovery_embedding_step(recovery, optimizer: Optional[torch.optim.Optimizer], lq_emb: torch.Tensor,
                                     hq_emb: torch.Tensor, lq_latent: torch.Tensor) -> dict:
    """One IRN step on precomputed unit embeddings (a cache of the guide's embeddings of LQ/HQ faces):
    1 - cos(IRN(lq_emb, lq_latent), hq_emb). ``optimizer=None`` only evaluates."""
    device = next(recovery.parameters()).device
    lq_emb = F.normalize(lq_emb.float().to(device), dim=1)
    hq_emb = F.normalize(hq_emb.float().to(device), dim=1)
    train = optimizer is not None
    recovery.train(train)
    with torch.set_grad_enabled(train):
        pred = recovery(lq_emb, lq_latent.float().to(device))
        loss = 1 - (pred * hq_emb).sum(1).mean()
        if train:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    recovery.eval()
    return {"identity_recovery": float(loss.detach()), "lq_similarity": float((lq_emb * hq_emb).sum(1).mean()),
            "loss": float(loss.detach())}


def identity_recovery_step(id_model, optimizer: Optional[torch.optim.Optimizer], lq_crops: torch.Tensor,
                           hq_crops: torch.Tensor, lq_latent: torch.Tensor, *,
                           restored_latent: Optional[torch.Tensor] = None,
                           decode: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                           mask_step: float = 1.0, mask_sparsity: float = 0.05,
                           pixel_weight: float = 1.0) -> dict:
    """One step for the IRN (and the latent mask when ``restored_latent`` and ``decode`` are given).

    lq_crops/hq_crops: aligned degraded/clean crops [N,3,S,S] 0..1; lq_latent: the degraded latent.
    restored_latent: the lookup latent of the degraded faces; decode(z) -> crops 0..1 (differentiable).
    Returns the losses as floats.
    """
    device = next(id_model.recovery.parameters()).device
    lq_crops, hq_crops = lq_crops.float().to(device).clone(), hq_crops.float().to(device).clone()
    lq_latent = lq_latent.float().to(device).clone()  # also turns inference-mode tensors into normal ones
    with torch.no_grad():
        hq_emb = id_model.embed(hq_crops)
        lq_emb = id_model.embed(lq_crops)
    train = optimizer is not None
    id_model.recovery.train(train)
    losses = {}
    with torch.set_grad_enabled(train):
        pred = id_model.recovery(lq_emb, lq_latent.float().to(device))
        loss = 1 - (pred * hq_emb).sum(1).mean()
        losses["identity_recovery"] = float(loss.detach())
        losses["lq_similarity"] = float((lq_emb * hq_emb).sum(1).mean())
        if id_model.mask is not None and restored_latent is not None and decode is not None:
            z = restored_latent.float().to(device).detach().clone().requires_grad_(True)
            with torch.enable_grad():
                sim = (id_model.embed(decode(z)) * pred.detach()).sum(1)
                (grad,) = torch.autograd.grad(sim.sum(), z)
            grad = grad / (grad.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt() + 1e-12)
            soft = id_model.mask.soft()
            if soft.shape[-2:] != z.shape[-2:]:
                raise ValueError(f"latent mask is {tuple(soft.shape[-2:])} but the latent is {tuple(z.shape[-2:])}")
            faces = decode(z.detach() + mask_step * soft * grad.detach())
            mask_id = 1 - (id_model.embed(faces) * hq_emb).sum(1).mean()
            hq_small = hq_crops if hq_crops.shape[-2:] == faces.shape[-2:] else F.interpolate(
                hq_crops, size=faces.shape[-2:], mode="bilinear", antialias=True)
            mask_pix = F.l1_loss(faces, hq_small)
            mask_loss = mask_id + pixel_weight * mask_pix + mask_sparsity * soft.mean()
            loss = loss + mask_loss
            losses.update(mask_identity=float(mask_id.detach()), mask_pixel=float(mask_pix.detach()),
                          mask_fraction=float((soft > 0.5).float().mean()))
        if train:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    id_model.recovery.eval()
    losses["loss"] = float(loss.detach())
    return losses
