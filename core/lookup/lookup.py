"""lookup(): restore face crops with a codebook lookup (quality slider + fidelity) and return FACE_LATENT."""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Mapping, Optional

import torch
import torch.nn.functional as F

from ...errors import FaceRefineError
from ..types import FaceCrops, FaceLatent
from .detail import carry_detail
from .restorer import Restorer
from .steering import Critic, steer

log = logging.getLogger("facerefine")

MODES = ("auto", "trained", "training-free", "off")
DEFAULT_CRITIC = "auto"   # core.score default critic: face-iqa (issue 18)


def no_slider_note(arch: str) -> str:
    return (f"{arch} has no lookup Transformer: the quality slider and fidelity do not apply; "
            f"this is the base {arch} output")


def resolve_mode(restorer: Restorer, mode: str, quality: float, critic) -> tuple[str, Optional[str]]:
    """The mode that actually runs, and a note when it differs from what was asked for."""
    mode = (mode or "auto").strip().lower().replace("_", "-")
    if mode not in MODES:
        raise FaceRefineError(f"unknown lookup mode '{mode}'; use one of {', '.join(MODES)}")
    if not restorer.supports_quality:
        return "off", no_slider_note(restorer.architecture)
    if mode == "trained" and not restorer.has_trained_conditioning:
        raise FaceRefineError(
            f"mode 'trained' needs quality-conditioning weights: {restorer.name} is a plain {restorer.architecture} "
            f"checkpoint. Attach a conditioning file (trained with `python -m facerefine train`), use an IQPFR "
            f"model, or use mode 'training-free' (critic-steered) or 'off'")
    if mode == "auto":
        if restorer.has_trained_conditioning:
            return "trained", None
        if quality <= 0:
            return "off", None
        if critic is None and _default_critic_error() is not None:
            return "off", (f"no trained quality conditioning and no differentiable quality critic available "
                           f"({_default_critic_error()}); quality slider inactive, base {restorer.architecture} output")
        return "training-free", None
    return mode, None


_critic_error: list = []


def _default_critic_error() -> Optional[str]:
    if not _critic_error:
        try:
            from ..score import get_info
            get_info(DEFAULT_CRITIC)
            _critic_error.append(None)
        except Exception as err:  # score package missing/incomplete: say why in the note
            _critic_error.append(str(err).splitlines()[0] if str(err) else type(err).__name__)
    return _critic_error[0]


def as_critic(critic, device) -> Critic:
    """A callable x [N,3,H,W] 0..1 -> [N]; accepts a callable, a core.score Metric (uses .critic) or a name."""
    if critic is None:
        critic = DEFAULT_CRITIC
    if isinstance(critic, str):
        from ..score import get_critic
        return get_critic(critic, device)
    if hasattr(critic, "critic") and callable(critic.critic):
        return critic.critic
    if callable(critic):
        return critic
    raise FaceRefineError(f"critic must be a callable or a quality metric, got {type(critic).__name__}")


def _to_model(crops: torch.Tensor, size: int, device) -> torch.Tensor:
    x = crops.to(device=device, dtype=torch.float32, non_blocking=True)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    return x


def native_size(restorer: Restorer, crop_size: int) -> int:
    """Fully convolutional restorers (IQPFRv2) run at the crop's own size (a multiple of 16); others at theirs."""
    model = restorer.codebook
    if getattr(model, "fully_convolutional", False) and crop_size % model.latent_stride == 0:
        return crop_size
    return restorer.img_size


def lookup(face_crops: FaceCrops, restorer: Restorer, quality: float = 1.0, fidelity: float = 0.5,
           mode: str = "auto", critic=None, top_k: int = 8, steer_rounds: int = 2, max_fraction: float = 0.5,
           batch_size: int = 8, keep_latent: bool = True,
           progress: Optional[Callable[[int, int], None]] = None) -> tuple[FaceCrops, FaceLatent]:
    """Restore every face crop.

    quality: IQPFR slider 0..1. In 'trained' mode it is the NR-IQA score the lookup is conditioned on;
        in 'training-free' mode it is the steering strength (0 = exactly the base output).
    fidelity: CodeFormer w (0 = the codebook's face, 1 = closest to the input).
    mode: 'auto' (trained if the restorer has conditioning weights, else training-free if a critic exists,
        else off), 'trained', 'training-free' or 'off' (plain base model).
    critic: differentiable NR-IQA callable x [N,3,H,W] 0..1 -> [N] (or a core.score Metric / metric name)
        for training-free steering; default core.score 'face-iqa'.
    Faces run in batches of ``batch_size``; results equal one-at-a-time calls.
    """
    if not isinstance(face_crops, FaceCrops):
        raise FaceRefineError(f"lookup needs FACE_CROPS, got {type(face_crops).__name__}")
    if not isinstance(restorer, Restorer):
        raise FaceRefineError(f"lookup needs a RESTORER handle (load_restorer), got {type(restorer).__name__}")
    quality, fidelity = float(quality), float(fidelity)
    if not 0.0 <= quality <= 1.0:
        raise FaceRefineError(f"quality must be within 0..1, got {quality}")
    if not 0.0 <= fidelity <= 1.0:
        raise FaceRefineError(f"fidelity must be within 0..1, got {fidelity}")
    run_mode, note = resolve_mode(restorer, mode, quality, critic)
    steering = run_mode == "training-free" and quality > 0
    critic_fn = as_critic(critic, restorer.device) if steering else None
    n = len(face_crops)
    if n == 0:
        return face_crops, _empty_latent(restorer, fidelity, quality, run_mode)
    outs, parts = [], []
    batch_size = max(1, int(batch_size))
    # steering needs autograd on code vectors: plain no_grad there, inference_mode otherwise
    grad_ctx = torch.no_grad if steering else torch.inference_mode
    model_size = native_size(restorer, face_crops.crops.shape[-1])
    with grad_ctx(), restorer.autocast():
        for start in range(0, n, batch_size):
            x = _to_model(face_crops.crops[start:start + batch_size], model_size, restorer.device)
            if restorer.codebook is None:
                out = restorer.loaded.run_whole(x).float()
            else:
                out, part = _codebook_batch(restorer, x, quality, fidelity, run_mode, critic_fn, top_k,
                                            steer_rounds, max_fraction, keep_latent)
                parts.append(part)
            check_finite_output(out, restorer, face_crops, start)
            outs.append(out.clamp(0, 1))
            if progress is not None:
                progress(min(start + batch_size, n), n)
    restored = carry_detail(torch.cat(outs).to(face_crops.crops.device), face_crops.crops, model_size, fidelity)
    step = f"lookup:{restorer.architecture}:{run_mode}"
    new_crops = face_crops.with_crops(restored, step)
    latent = _merge_latent(restorer, parts, fidelity, quality, run_mode, n)
    latent = dataclasses.replace(latent, lq_crops=face_crops.crops)  # identity target for refine, no copy
    if note:
        latent.extra["note"] = note
        log.info("FaceRefine lookup: %s", note)
    return new_crops, latent


def check_finite_output(out: torch.Tensor, restorer: Restorer, face_crops: FaceCrops, start: int) -> None:
    """Refuse NaN/inf restorer output (it would paint the face black), naming the faces and the file."""
    finite = torch.isfinite(out.flatten(1)).all(dim=1)
    if bool(finite.all()):
        return
    faces = [start + i for i in torch.nonzero(~finite).flatten().tolist()]
    where = ", ".join(f"face {i} (image {face_crops.faces[i].image_index})" if i < len(face_crops.faces)
                      else f"face {i}" for i in faces[:8])
    path = getattr(restorer.loaded, "path", None)
    raise FaceRefineError(
        f"restorer {restorer.name} ({path or 'no file'}) produced NaN/inf pixels for {where}: its weights are "
        f"broken or overflow{' in half precision' if restorer.device.type == 'cuda' else ''}; "
        f"try another restorer or re-download the file")


def _codebook_batch(restorer, x, quality, fidelity, run_mode, critic_fn, top_k, rounds, max_fraction, keep_latent):
    model = restorer.codebook
    lq, skips = model.encode(x * 2 - 1)
    film = None
    if run_mode == "trained":
        film = model.film(torch.full((x.shape[0],), quality, device=x.device))
    logits = model.logits(lq, film)
    # top-1 of the softmax, exactly as CodeFormer's forward picks it
    indices = torch.topk(F.softmax(logits, dim=2), 1, dim=2)[1].squeeze(2)
    info = {}
    if run_mode == "training-free" and quality > 0:
        result = steer(model, lq, skips, logits, indices, fidelity, critic_fn, quality, top_k=top_k,
                       rounds=rounds, max_fraction=max_fraction)
        indices = result.indices
        info = {"critic_before": result.score_before.cpu(), "critic_after": result.score_after.cpu(),
                "changed_tokens": result.changed.cpu(), "decodes": result.decodes, "notes": result.notes}
    if hasattr(model, "with_quality"):  # IQPFRv2: the decoder is quality-conditioned too
        skips = model.with_quality(skips, torch.full((x.shape[0],), quality, device=x.device))
    quantized = model.finish_quantize(model.code_features(indices), lq)
    out = (model.decode(quantized, skips, fidelity).float() + 1) / 2  # clamped after the NaN/inf check
    part = {"indices": indices, "info": info}
    if keep_latent:
        part.update(lq=lq, quantized=quantized, logits=logits, skips=skips)
    return out, part


def _merge_latent(restorer, parts, fidelity, quality, run_mode, n) -> FaceLatent:
    extra = {"mode": run_mode, "img_size": restorer.img_size, "decodable": restorer.codebook is not None}
    if not parts or "lq" not in parts[0]:
        latent = _empty_latent(restorer, fidelity, quality, run_mode, n)
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
                        skip_features=skips, fidelity=fidelity, quality=quality, extra=extra)
    _merge_info(latent, parts)
    return latent


def _merge_info(latent, parts) -> None:
    infos = [p["info"] for p in parts if p.get("info")]
    if infos:
        for key in ("critic_before", "critic_after", "changed_tokens"):
            latent.extra[key] = torch.cat([i[key] for i in infos])
        latent.extra["decodes"] = sum(i["decodes"] for i in infos)
        latent.extra["steer_notes"] = sorted({m for i in infos for m in i["notes"]})


def _empty_latent(restorer, fidelity, quality, run_mode, n: int = 0) -> FaceLatent:
    empty = torch.zeros(n, 0, 1, 1)
    return FaceLatent(restorer=restorer.name, architecture=restorer.architecture, lq_features=empty,
                      quantized=empty, fidelity=fidelity, quality=quality,
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


def decode(restorer: Restorer, quantized: torch.Tensor, skip_features: Mapping[str, torch.Tensor],
           fidelity: float = 0.5) -> torch.Tensor:
    """Decode (possibly edited) quantized latents to faces [N,3,S,S] in 0..1 at the restorer's size.

    The caller's grad mode applies (wrap in torch.inference_mode() when no gradients are needed);
    gradients flow to ``quantized`` when it requires grad. Empty ``skip_features`` or fidelity 0
    skip the encoder fusion.
    """
    model = restorer.codebook
    if model is None:
        raise FaceRefineError(no_slider_note(restorer.architecture).split(":")[0] +
                              ": it has no codebook latent to decode")
    skips = skip_features or {}
    if fidelity > 0 and skips:
        missing = [s for s in model.generator_taps.values() if s not in skips]
        if missing:
            raise FaceRefineError(f"skip_features lack the sizes {missing} needed for fidelity {fidelity}")
    with restorer.autocast():
        out = model.decode(quantized.to(restorer.device), {k: v.to(restorer.device) for k, v in skips.items()},
                           fidelity if skips else 0.0)
    return ((out.float() + 1) / 2).clamp(0, 1)


__all__ = ["MODES", "lookup", "decode", "concat_latents", "resolve_mode", "as_critic", "no_slider_note"]
