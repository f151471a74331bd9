"""Identity-guided latent refinement (CLR-Face style) of the lookup result.

The lookup latent is noised to the level set by ``strength`` (SDEdit) and denoised by the latent
score model conditioned on the degraded latent. At every step the ArcFace cosine similarity between
the decoded face and the identity target is raised by its gradient, which reaches only the masked
latent positions; positions outside the mask follow the unguided trajectory exactly.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ...errors import FaceRefineError
from ..lookup.detail import carry_detail
from ..lookup.lookup import decode
from ..types import FaceCrops, FaceLatent
from .guidance import (align_reference_with_landmarks, crop_landmarks, embed, guidance_mask,
                       identity_gradient, identity_target)
from .samplers import denoiser_steps, get_sampler, sdedit_sigmas

DEFAULT_STEPS = 8
DEFAULT_STRENGTH = 0.4
DEFAULT_IDENTITY_STRENGTH = 0.5
DEFAULT_SAMPLER = "dpmpp_2m"
# Fresh identity gradients per refine (each costs a decoder forward + backward): one at every default step. One
# gradient reused for all steps overshoots in v2's latent (coloured blocks at strength >= 1, docs/identity_eval.md).
DEFAULT_GUIDANCE_STEPS = DEFAULT_STEPS
# Augmented views of the decoded face averaged into each identity gradient (1 = the face alone).
DEFAULT_IDENTITY_VIEWS = 4
# Guidance stops once a face is as similar to its target as two photos of one person usually are (the guide's
# median cosine, neutral vs smiling photo, 82 London training identities): a face that already is that person
# is not pulled toward the reference's expression and lighting, or toward the degraded face's blur.
SAME_PERSON_SIMILARITY = {"dlib": 0.988}
# With a reference photo: how much of its fine detail a blurred restored face takes (0 = off).
DEFAULT_REFERENCE_DETAIL = 1.0

Decoder = Callable[[torch.Tensor], torch.Tensor]


class RefineInterrupted(FaceRefineError):
    """Raised when ``should_stop()`` asks to stop between steps."""


@dataclass
class RefineResult:
    crops: FaceCrops
    latent: torch.Tensor                   # refined latent in the restorer's units [N,C,h,w]
    mask: Optional[torch.Tensor] = None    # [N,1,h,w] positions that received identity gradients
    mask_source: str = ""
    target_source: str = ""
    similarity_before: Optional[torch.Tensor] = None  # ArcFace cos(decoded, target) before / after
    similarity_after: Optional[torch.Tensor] = None
    info: dict = field(default_factory=dict)


def restorer_decoder(restorer, latent: FaceLatent, index: torch.Tensor) -> Decoder:
    """z [n,C,h,w] (restorer units) -> faces [n,3,S,S] 0..1 through the lookup step's decode()."""
    if getattr(restorer, "codebook", None) is None and hasattr(restorer, "architecture"):
        raise FaceRefineError(f"refine needs a codebook restorer (CodeFormer or IQPFR); "
                              f"{restorer.architecture} has no latent to refine")
    skips = {k: plain_tensor(v[index]) for k, v in (latent.skip_features or {}).items()}

    def run(z: torch.Tensor) -> torch.Tensor:
        sub = {k: v.to(z.device) for k, v in skips.items()}
        return decode(restorer, z, sub, latent.fidelity)
    return run


def plain_tensor(t):
    """A normal tensor from one made under torch.inference_mode (those cannot join autograd graphs)."""
    return t.clone() if isinstance(t, torch.Tensor) and t.is_inference() else t


def _autocast(device: torch.device):
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def _face_noise(n_faces: int, shape, seed: int, offset: int) -> torch.Tensor:
    """Per-face noise: face i always gets the same noise for a seed, whatever the batching."""
    out = []
    for i in range(n_faces):
        g = torch.Generator().manual_seed((int(seed) * 1_000_003 + offset + i) % (2 ** 63))
        out.append(torch.randn(shape, generator=g))
    return torch.stack(out)


def refine_latent(face_crops: FaceCrops, latent: FaceLatent, restorer, prior, id_model, *,
                  steps: int = DEFAULT_STEPS, strength: float = DEFAULT_STRENGTH,
                  identity_strength: float = DEFAULT_IDENTITY_STRENGTH, reference=None,
                  sampler: str = DEFAULT_SAMPLER, seed: int = 0, target: str = "auto",
                  lq_crops: Optional[torch.Tensor] = None, decoder: Optional[Callable] = None,
                  guidance_steps: Optional[int] = None, identity_views: Optional[int] = None,
                  reference_detail: float = DEFAULT_REFERENCE_DETAIL, gate_by_detail: bool = True,
                  batch_size: int = 8, device=None, index_offset: int = 0,
                  progress: Optional[Callable[[int, int], None]] = None,
                  should_stop: Optional[Callable[[], bool]] = None) -> RefineResult:
    """Refine every face; see ``refine`` for the arguments. ``decoder(restorer, latent, index)`` overrides
    how latents are decoded (default: the lookup step's ``decode``)."""
    n = len(face_crops)
    if len(latent) != n:
        raise FaceRefineError(f"FACE_LATENT holds {len(latent)} faces but FACE_CROPS holds {n}; "
                              f"connect the outputs of the same lookup step")
    z_lookup = plain_tensor(latent.quantized.detach().float().cpu())
    sigmas_cfg = (prior.config.sigma_min, prior.config.sigma_max) if prior is not None else (0.002, 80.0)
    sigmas = sdedit_sigmas(int(steps), float(strength), *sigmas_cfg)
    guided = identity_strength != 0 and id_model is not None
    if n == 0 or len(sigmas) < 2:
        result = RefineResult(face_crops, z_lookup, info={"skipped": True})
        if n and reference is not None and reference_detail > 0:
            result.crops, result.info["reference_detail"] = apply_reference_detail(
                face_crops, reference, id_model, reference_detail, device)
        return result
    if z_lookup.numel() == 0 or (hasattr(restorer, "codebook") and restorer.codebook is None):
        raise FaceRefineError(f"refine needs a codebook latent (CodeFormer or IQPFR restorer); "
                              f"{latent.architecture} has none to refine - set refine steps to 0")
    if prior is not None:
        try:
            prior.check_latent(z_lookup, latent.lq_features)
        except ValueError as err:
            raise FaceRefineError(f"{err}. Load the latent prior trained for this restorer, or none.") from None
    n_steps = len(sigmas) - 1
    guidance_steps = DEFAULT_GUIDANCE_STEPS if guidance_steps is None else int(guidance_steps)
    if guidance_steps < 1:
        raise FaceRefineError("guidance_steps must be >= 1 (use identity_strength 0 to turn guidance off)")
    views = DEFAULT_IDENTITY_VIEWS if identity_views is None else int(identity_views)
    if views < 1:
        raise FaceRefineError("identity_views must be >= 1 (1 = the decoded face alone)")
    fresh = {k * n_steps // min(guidance_steps, n_steps) for k in range(min(guidance_steps, n_steps))}
    device = torch.device(device) if device is not None else _module_device(prior, id_model)
    sample = get_sampler(sampler)
    make_decoder = decoder or restorer_decoder
    h, w = z_lookup.shape[-2:]

    target_emb = mask = ref_crop = ref_landmarks = None
    target_source = mask_source = ""
    landmarks = torch.from_numpy(crop_landmarks(face_crops)).float()  # [N,5,2] crop fractions
    if guided:
        if reference is not None:
            ref_crop, ref_landmarks = align_reference_with_landmarks(reference, face_crops.crop_size)
        if lq_crops is None:
            lq_crops = latent.lq_crops
        if lq_crops is None:
            lq_crops = face_crops.crops  # no degraded crops kept: keep the lookup result's identity
        target_emb, target_source = identity_target(
            id_model, target, n, reference_crop=ref_crop, lq_crops=lq_crops,
            lq_latent=plain_tensor(latent.lq_features.float()), device=device, landmarks=landmarks,
            reference_landmarks=ref_landmarks)
        mask, mask_source = guidance_mask(face_crops, id_model, (h, w))
    elif reference is not None:  # (reports a reference with no face before any work)
        ref_crop, ref_landmarks = align_reference_with_landmarks(reference, face_crops.crop_size)
    strengths = torch.full((n,), float(identity_strength))
    if guided and target_source == "reference" and gate_by_detail:
        # toward a reference photo, each face is guided as much as it lacks detail: a sharp face already shows
        # its person, and guidance would only pull it toward the reference's expression and lighting
        from .reference_detail import face_deficit_weights
        weights = face_deficit_weights(face_crops.crops, ref_crop, landmarks.numpy())
        strengths = strengths * torch.tensor(weights, dtype=torch.float32)
    margin = SAME_PERSON_SIMILARITY.get(getattr(id_model, "network", "")) if guided else None
    if margin is not None:  # faces already at the target's same-person similarity: no guidance
        before = _similarity(id_model, face_crops.crops, target_emb, device, batch_size, landmarks)
        strengths = torch.where(before >= margin, torch.zeros_like(strengths), strengths)
    if guided and not bool(strengths.any()):  # no face needs guidance: no identity gradients to pay for
        guided = False
    info = {"identity_strength_per_face": [round(float(v), 4) for v in strengths]} if identity_strength else {}

    total_calls = denoiser_steps(sampler, sigmas) * (2 if guided else 1) * -(-n // batch_size)
    done = [0]

    def tick() -> None:
        if should_stop is not None and should_stop():
            raise RefineInterrupted("refine interrupted")
        done[0] += 1
        if progress is not None:
            progress(done[0], total_calls)

    outs = []
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        chunk = _refine_chunk(
            z_lookup[idx], latent, idx, restorer, prior, id_model, make_decoder, sample, sigmas, seed,
            strengths[idx], guided, None if target_emb is None else target_emb[idx],
            None if mask is None else mask[idx], fresh, device, tick, index_offset, landmarks[idx], views, margin)
        outs.append(chunk)
    z_final = torch.cat([o[0] for o in outs])
    with torch.inference_mode(), _autocast(device):
        images = []
        for start in range(0, n, batch_size):
            idx = torch.arange(start, min(start + batch_size, n))
            dec = make_decoder(restorer, latent, idx)
            images.append(dec(z_final[idx].to(device)).float().cpu())
    step = f"refine:{sampler}x{int(steps)}@{float(strength):g}"
    lq = latent.lq_crops if latent.lq_crops is not None else face_crops.crops
    refined = carry_detail(torch.cat(images), lq, int(latent.extra.get("img_size", lq.shape[-1])), latent.fidelity)
    result = RefineResult(face_crops.with_crops(refined, step), z_final, mask, mask_source,
                          target_source)
    if ref_crop is not None and reference_detail > 0:
        result.crops, result.info["reference_detail"] = apply_reference_detail(
            result.crops, (ref_crop, ref_landmarks), id_model, reference_detail, device)
    result.info.update(info)
    if guided:
        result.similarity_before = torch.cat([o[1] for o in outs])
        result.similarity_after = _similarity(id_model, result.crops.crops, target_emb, device, batch_size, landmarks)
        result.info["identity_network"] = getattr(id_model, "network", "arcface")
    return result


def apply_reference_detail(face_crops: FaceCrops, reference, id_model, amount: float = DEFAULT_REFERENCE_DETAIL,
                           device=None):
    """The reference photo's fine detail into ``face_crops`` -> (FaceCrops, DetailReport). ``reference``: an
    IMAGE, an aligned FaceCrops, or an already aligned (crop [1,3,S,S], landmarks [1,5,2]) pair. With an
    identity model, only the reference's person takes detail (``reference_detail.same_person``)."""
    from .reference_detail import same_person, transfer_reference_detail
    if isinstance(reference, tuple):
        ref_crop, ref_landmarks = reference
    else:
        ref_crop, ref_landmarks = align_reference_with_landmarks(reference, face_crops.crop_size)
    landmarks = crop_landmarks(face_crops)
    match = None
    if id_model is not None:
        device = torch.device(device) if device is not None else _module_device(id_model)
        match = same_person(id_model, face_crops, torch.from_numpy(landmarks).float(), ref_crop, ref_landmarks,
                            device)
    return transfer_reference_detail(face_crops, ref_crop, amount, landmarks, match)


def _module_device(*modules) -> torch.device:
    for m in modules:
        if isinstance(m, torch.nn.Module):
            for p in m.parameters():
                return p.device
    return torch.device("cpu")


def _similarity(id_model, crops, target, device, batch_size, landmarks=None) -> torch.Tensor:
    out = []
    with torch.inference_mode(), _autocast(device):
        for start in range(0, len(crops), batch_size):
            lm = None if landmarks is None else landmarks[start:start + batch_size]
            emb = embed(id_model, crops[start:start + batch_size].to(device), lm).float()
            out.append((emb * target[start:start + batch_size].to(device)).sum(1).cpu())
    return torch.cat(out)


def _refine_chunk(z0, latent, idx, restorer, prior, id_model, make_decoder, sample, sigmas, seed,
                  identity_strength, guided, target, mask, fresh, device, tick, index_offset=0, landmarks=None,
                  views=1, margin=None):
    z0 = z0.to(device)
    if prior is not None:
        x_anchor = prior.normalize(z0)
        cond = prior.normalize_cond(plain_tensor(latent.lq_features[idx].float().to(device)))
        to_latent = prior.denormalize
    else:
        x_anchor, cond, to_latent = z0, None, (lambda x: x)
    first = int(idx[0]) + int(index_offset)
    noise = _face_noise(len(idx), z0.shape[1:], seed, first).to(device)
    sigma0 = float(sigmas[0])
    x_start = x_anchor + sigma0 * noise

    def prior_denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        if prior is None:  # no prior: trust the lookup, i.e. the noise added is the noise to remove
            return x - sigma * noise
        with torch.no_grad(), _autocast(device):
            return prior(x, torch.full((x.shape[0],), sigma, device=device), cond).float()

    def plain(x, sigma, i):
        tick()
        return prior_denoise(x, sigma)

    generator = torch.Generator().manual_seed(int(seed) + first)
    if not guided:
        return to_latent(sample(plain, x_start.clone(), sigmas, generator=generator)).float().cpu(), None

    trajectory: list[torch.Tensor] = []
    sample(plain, x_start.clone(), sigmas, generator=generator,
           after_step=lambda i, x: trajectory.append(x.clone()) or x)

    decode_raw = make_decoder(restorer, latent, idx)
    mask = mask.to(device)
    target = target.to(device)

    def decode(x: torch.Tensor) -> torch.Tensor:
        with _autocast(device):
            return decode_raw(to_latent(x)).float()

    cache: dict = {}
    first_sim: list = []
    view_generators = [torch.Generator().manual_seed((int(seed) * 7919 + first + i + 1) % (2 ** 63))
                       for i in range(len(idx))]

    def guided_denoise(x, sigma, i):
        tick()
        x0 = prior_denoise(x, sigma)
        if i not in cache:
            if i in fresh or "last" not in cache:
                with _autocast(device):
                    grad, sim = identity_gradient(x0, decode, id_model, target, mask, landmarks, views,
                                                  view_generators, margin)
                cache["last"] = grad
                if not first_sim:
                    first_sim.append(sim.float().cpu())
            weight = identity_strength.to(device).view(-1, 1, 1, 1) * (float(sigmas[i]) - float(sigmas[i + 1])) / sigma0
            cache[i] = weight * cache["last"]
        return x0 + cache[i]

    keep = mask.bool()
    z = sample(guided_denoise, x_start.clone(), sigmas, generator=torch.Generator().manual_seed(int(seed) + first),
               after_step=lambda i, x: torch.where(keep, x, trajectory[i]))
    return to_latent(z).float().cpu(), first_sim[0]


def select_latent(latent: FaceLatent, indices) -> FaceLatent:
    """The FACE_LATENT entries of some faces (tensors batched on dim 0 are indexed)."""
    idx = torch.as_tensor(list(indices), dtype=torch.long)
    n = len(latent)

    def pick(v):
        return v[idx] if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == n else v
    return dataclasses.replace(
        latent, lq_features=pick(latent.lq_features), quantized=pick(latent.quantized),
        indices=pick(latent.indices), logits=pick(latent.logits), lq_crops=pick(latent.lq_crops),
        skip_features={k: pick(v) for k, v in (latent.skip_features or {}).items()},
        extra={k: pick(v) for k, v in (latent.extra or {}).items()})


def refine(face_crops: FaceCrops, latent: FaceLatent, restorer, prior, id_model,
           steps: int = DEFAULT_STEPS, strength: float = DEFAULT_STRENGTH,
           identity_strength: float = DEFAULT_IDENTITY_STRENGTH, reference=None,
           sampler: str = DEFAULT_SAMPLER, seed: int = 0,
           progress: Optional[Callable[[int, int], None]] = None,
           should_stop: Optional[Callable[[], bool]] = None, **options) -> FaceCrops:
    """Identity-guided latent refinement of the lookup result.

    face_crops/latent: the lookup step's outputs. restorer: the lookup's restorer handle (decodes latents).
    prior: a LatentScoreModel or None (no prior: only the identity guidance changes the latent).
    id_model: an IdentityModel (ArcFace [+ IRN + latent mask]) or None (no guidance).
    steps/strength: SDEdit steps and noise level (0 steps or strength 0 return ``face_crops`` unchanged).
    identity_strength: total size of the identity update, in latent standard deviations.
    reference: optional IMAGE [B,H,W,3] of the same person (aligned with the crop step).
    progress(done, total) and should_stop() are called at every denoiser step.
    options: target ("auto"|"reference"|"recovery"|"lq"), lq_crops, reference_detail (0..1, the reference
    photo's fine detail into faces that lack it), gate_by_detail (toward a reference, scale each face's identity
    strength by the detail it lacks; False = the full strength for every face), guidance_steps (how many steps compute a
    fresh identity gradient through decoder + ArcFace, spread evenly; the others reuse the last one;
    = steps for a fresh gradient at every step), batch_size, device, index_offset.
    """
    return refine_latent(face_crops, latent, restorer, prior, id_model, steps=steps, strength=strength,
                         identity_strength=identity_strength, reference=reference, sampler=sampler,
                         seed=seed, progress=progress, should_stop=should_stop, **options).crops
