"""lookup(): restore face crops with a codebook lookup (quality slider + fidelity) and return FACE_LATENT."""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Mapping, Optional

import torch
import torch.nn.functional as F

from ...errors import FaceRefineError, WeightsFormatError, WeightsNotFoundError
from ...models.cache import cached
from ...models.restorers import Restorer
from ..detail.exemplars import apply_exemplar_detail
from ..types import FaceCrops, FaceLatent
from .input_detail import carry_detail
from .latent import empty_latent, merge_latent
from .options import DEFAULT_CRITIC, MODES, LookupOptions
from .steering import CodeBatch, Critic, steer

log = logging.getLogger("facerefine")


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


def _default_critic_error() -> Optional[str]:
    """Why the default critic cannot load (checked once), or None."""
    return cached("critic-check", DEFAULT_CRITIC, _check_default_critic)


def _check_default_critic() -> Optional[str]:
    try:
        from ..score import get_info
        get_info(DEFAULT_CRITIC)
        return None
    except Exception as err:  # score package missing/incomplete: say why in the note
        return str(err).splitlines()[0] if str(err) else type(err).__name__


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


def to_model(crops: torch.Tensor, size: int, device) -> torch.Tensor:
    """Crops on the restorer's device, float, resized to the size it runs at."""
    x = crops.to(device=device, dtype=torch.float32, non_blocking=True)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    return x


@dataclasses.dataclass(frozen=True)
class _Run:
    """What every batch of one lookup call shares."""

    restorer: Restorer
    options: LookupOptions
    mode: str                              # the mode that runs (resolve_mode)
    note: Optional[str]                    # why it differs from the mode asked for
    critic: Optional[Critic]               # training-free steering's critic, else None
    keep_latent: bool

    @property
    def quality(self) -> float:
        return float(self.options.quality)

    @property
    def fidelity(self) -> float:
        return float(self.options.fidelity)


def lookup(face_crops: FaceCrops, restorer: Restorer, options: LookupOptions = LookupOptions(), *,
           keep_latent: bool = True, progress: Optional[Callable[[int, int], None]] = None
           ) -> tuple[FaceCrops, FaceLatent]:
    """Restore every face crop (``options.restorer`` is not read: ``restorer`` is the loaded handle).

    quality: IQPFR slider 0..1. In 'trained' mode it is the NR-IQA score the lookup is conditioned on;
        in 'training-free' mode it is the steering strength (0 = exactly the base output).
    fidelity: CodeFormer w (0 = the codebook's face, 1 = closest to the input).
    mode: 'auto' (trained if the restorer has conditioning weights, else training-free if a critic exists,
        else off), 'trained', 'training-free' or 'off' (plain base model).
    critic: for training-free steering; default core.score 'face-iqa'.
    Faces run in batches of ``options.batch_size``; results equal one-at-a-time calls.
    """
    run = _start(face_crops, restorer, options, keep_latent)
    n = len(face_crops)
    if n == 0:
        return face_crops, empty_latent(restorer, run.fidelity, run.mode)
    outs, parts = [], []
    batch_size = max(1, int(options.batch_size))
    # steering needs autograd on code vectors: plain no_grad there, inference_mode otherwise
    grad_ctx = torch.no_grad if run.critic is not None else torch.inference_mode
    model_size = restorer.model_size(face_crops.crops.shape[-1])
    with grad_ctx(), restorer.autocast():
        for start in range(0, n, batch_size):
            x = to_model(face_crops.crops[start:start + batch_size], model_size, restorer.device)
            if restorer.codebook is None:
                out = restorer.run_whole(x).float()
            else:
                out, part = _codebook_batch(run, x)
                parts.append(part)
            check_finite_output(out, restorer, face_crops, start)
            outs.append(out.clamp(0, 1))
            if progress is not None:
                progress(min(start + batch_size, n), n)
    restored = carry_detail(torch.cat(outs).to(face_crops.crops.device), face_crops.crops, model_size, run.fidelity)
    new_crops = face_crops.with_crops(restored, f"lookup:{restorer.architecture}:{run.mode}")
    new_crops, exemplar_amount, exemplar_note = _exemplar_detail(new_crops, exemplar_detail_amount(restorer, options))
    latent = merge_latent(restorer, parts, run.fidelity, run.mode, n)
    latent.extra["exemplar_detail"] = exemplar_amount  # refine decodes again and re-applies it
    latent = dataclasses.replace(latent, lq_crops=face_crops.crops)  # identity target for refine, no copy
    note = "; ".join(t for t in (run.note, exemplar_note) if t)
    if note:
        latent.extra["note"] = note
        log.info("FaceRefine lookup: %s", note)
    return new_crops, latent


def _exemplar_detail(crops: FaceCrops, amount: float) -> tuple[FaceCrops, float, Optional[str]]:
    """Exemplar detail on the restored crops -> (crops, amount applied, note). A missing or broken exemplar
    file turns it off with a note: it is an extra, and never fails the restore."""
    if amount <= 0:
        return crops, 0.0, None
    try:
        return apply_exemplar_detail(crops, amount)[0], amount, None
    except (WeightsNotFoundError, WeightsFormatError, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        return crops, 0.0, f"exemplar detail off: {first}"


def exemplar_detail_amount(restorer: Restorer, options: LookupOptions) -> float:
    """Exemplar detail's strength: ``exemplar_detail * quality``, fading out from fidelity 0.5 to 1 (fidelity 1
    returns the input), for restorers with the quality slider; else 0 (quality 0 stays the faithful clean-up;
    GFPGAN-type restorers draw their own detail)."""
    amount = float(options.exemplar_detail)
    if not 0.0 <= amount <= 1.0:
        raise FaceRefineError(f"exemplar detail must be within 0..1, got {amount}")
    if not restorer.supports_quality:
        return 0.0
    return amount * float(options.quality) * min(1.0, 2.0 * (1.0 - float(options.fidelity)))


def _start(face_crops: FaceCrops, restorer: Restorer, options: LookupOptions, keep_latent: bool) -> _Run:
    """Check the arguments, pick the mode and the critic."""
    if not isinstance(face_crops, FaceCrops):
        raise FaceRefineError(f"lookup needs FACE_CROPS, got {type(face_crops).__name__}")
    if not isinstance(restorer, Restorer):
        raise FaceRefineError(f"lookup needs a RESTORER handle (load_restorer), got {type(restorer).__name__}")
    quality, fidelity = float(options.quality), float(options.fidelity)
    if not 0.0 <= quality <= 1.0:
        raise FaceRefineError(f"quality must be within 0..1, got {quality}")
    if not 0.0 <= fidelity <= 1.0:
        raise FaceRefineError(f"fidelity must be within 0..1, got {fidelity}")
    run_mode, note = resolve_mode(restorer, options.mode, quality, options.critic)
    steering = run_mode == "training-free" and quality > 0
    critic = as_critic(options.critic, restorer.device) if steering else None
    return _Run(restorer, options, run_mode, note, critic, keep_latent)


def check_finite_output(out: torch.Tensor, restorer: Restorer, face_crops: FaceCrops, start: int) -> None:
    """Refuse NaN/inf restorer output (it would paint the face black), naming the faces and the file."""
    finite = torch.isfinite(out.flatten(1)).all(dim=1)
    if bool(finite.all()):
        return
    faces = [start + i for i in torch.nonzero(~finite).flatten().tolist()]
    where = ", ".join(f"face {i} (image {face_crops.faces[i].image_index})" if i < len(face_crops.faces)
                      else f"face {i}" for i in faces[:8])
    raise FaceRefineError(
        f"restorer {restorer.name} ({restorer.path or 'no file'}) produced NaN/inf pixels for {where}: its weights "
        f"are broken or overflow{' in half precision' if restorer.device.type == 'cuda' else ''}; "
        f"try another restorer or re-download the file")


def _codebook_batch(run: _Run, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """One batch through the codebook: encode, (conditioned) logits, top-1 codes, steering, decode."""
    model = run.restorer.codebook
    lq, skips = model.encode(x * 2 - 1)
    film = None
    if run.mode == "trained":
        film = model.film(torch.full((x.shape[0],), run.quality, device=x.device))
    logits = model.logits(lq, film)
    # top-1 of the softmax, exactly as CodeFormer's forward picks it
    indices = torch.topk(F.softmax(logits, dim=2), 1, dim=2)[1].squeeze(2)
    info = {}
    if run.critic is not None:
        result = steer(CodeBatch(model, lq, skips, logits, indices, run.fidelity), run.critic, run.quality,
                       run.options.steer)
        indices = result.indices
        info = {"critic_before": result.score_before.cpu(), "critic_after": result.score_after.cpu(),
                "changed_tokens": result.changed.cpu(), "decodes": result.decodes, "notes": result.notes}
    skips = model.with_quality(skips, torch.full((x.shape[0],), run.quality, device=x.device))
    quantized = model.finish_quantize(model.code_features(indices), lq)
    out = (model.decode(quantized, skips, run.fidelity).float() + 1) / 2  # clamped after the NaN/inf check
    part = {"indices": indices, "info": info}
    if run.keep_latent:
        part.update(lq=lq, quantized=quantized, logits=logits, skips=skips)
    return out, part


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


__all__ = ["as_critic", "check_finite_output", "decode", "exemplar_detail_amount", "lookup", "no_slider_note",
           "resolve_mode", "to_model"]
