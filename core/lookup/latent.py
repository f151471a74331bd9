"""FACE_LATENT from the lookup's batches, and one FACE_LATENT from several."""
from __future__ import annotations

import dataclasses

import torch

from ...models.restorers import Restorer
from ..types import FaceLatent


def merge_latent(restorer: Restorer, parts: list[dict], fidelity: float, run_mode: str, n: int) -> FaceLatent:
    """One latent from the per-batch parts of one lookup call (``lq``... only where the latent was kept)."""
    extra = {"mode": run_mode, "img_size": restorer.img_size, "decodable": restorer.codebook is not None}
    if not parts or "lq" not in parts[0]:
        latent = empty_latent(restorer, fidelity, run_mode, n)
        if parts:
            latent = dataclasses.replace(latent, indices=torch.cat([p["indices"] for p in parts]))
        latent.extra.update(extra)
        _merge_info(latent, parts)
        return latent
    one = len(parts) == 1

    def cat(key):
        return parts[0][key] if one else torch.cat([p[key] for p in parts])

    skips = parts[0]["skips"] if one else {k: torch.cat([p["skips"][k] for p in parts]) for k in parts[0]["skips"]}
    latent = FaceLatent(restorer=restorer.name, architecture=restorer.architecture, lq_features=cat("lq"),
                        quantized=cat("quantized"), indices=cat("indices"), logits=cat("logits"),
                        skip_features=skips, fidelity=fidelity, extra=extra)
    _merge_info(latent, parts)
    return latent


def _merge_info(latent: FaceLatent, parts: list[dict]) -> None:
    infos = [p["info"] for p in parts if p.get("info")]
    if infos:
        for key in ("critic_before", "critic_after", "changed_tokens"):
            latent.extra[key] = torch.cat([i[key] for i in infos])
        latent.extra["decodes"] = sum(i["decodes"] for i in infos)
        latent.extra["steer_notes"] = sorted({m for i in infos for m in i["notes"]})


def empty_latent(restorer: Restorer, fidelity: float, run_mode: str, n: int = 0) -> FaceLatent:
    """A latent without features (no faces, or a restorer without a codebook)."""
    empty = torch.zeros(n, 0, 1, 1)
    return FaceLatent(restorer=restorer.name, architecture=restorer.architecture, lq_features=empty,
                      quantized=empty, fidelity=fidelity,
                      extra={"mode": run_mode, "decodable": restorer.codebook is not None})


def concat_latents(latents: list[FaceLatent]) -> FaceLatent:
    """One FACE_LATENT from per-batch ones (same restorer and settings), faces in order."""
    if len(latents) == 1:
        return latents[0]
    first = latents[0]

    def cat(values):
        values = [v for v in values if v is not None]
        return torch.cat(values) if values else None

    extra = dict(first.extra)
    for key, value in first.extra.items():
        if isinstance(value, torch.Tensor):
            extra[key] = torch.cat([lat.extra[key] for lat in latents])
    if "decodes" in extra:
        extra["decodes"] = sum(lat.extra.get("decodes", 0) for lat in latents)
    return dataclasses.replace(
        first, lq_features=cat([lat.lq_features for lat in latents]),
        quantized=cat([lat.quantized for lat in latents]), indices=cat([lat.indices for lat in latents]),
        logits=cat([lat.logits for lat in latents]), lq_crops=cat([lat.lq_crops for lat in latents]),
        skip_features={k: torch.cat([lat.skip_features[k] for lat in latents]) for k in first.skip_features},
        extra=extra)


__all__ = ["concat_latents", "empty_latent", "merge_latent"]
