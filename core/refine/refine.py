"""Identity-guided latent refinement (CLR-Face style) of the lookup result.

The lookup latent is noised to the level set by ``strength`` (SDEdit) and denoised by the latent
score model conditioned on the degraded latent. At every step the identity network's cosine similarity
(ArcFace, or the embedded dlib ResNet) between the decoded face and the identity target is raised by its
gradient, which reaches only the masked latent positions; positions outside the mask follow the unguided
trajectory exactly.

    run = RefineRun(restorer, prior, id_model, reference=ReferenceFace.from_photo(photo, 512), seed=0)
    crops = refine(face_crops, latent, run, RefineOptions(steps=8))
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch

from ...errors import FaceRefineError
from ..crop.landmarks import crop_landmarks
from ..detail.exemplars import apply_exemplar_detail
from ..lookup.input_detail import carry_detail
from ..lookup.lookup import decode
from ..types import FaceCrops, FaceLatent
from .guidance import IdentityGoal, embed, guidance_mask, identity_gradient, identity_target
from .options import DEFAULT_GUIDANCE_STEPS, DEFAULT_IDENTITY_VIEWS, DEFAULT_REFERENCE_DETAIL, RefineOptions
from .reference import ReferenceFace
from .samplers import denoiser_steps, get_sampler, sdedit_sigmas

# Guidance stops once a face is as similar to its target as two photos of one person usually are (the guide's
# median cosine, neutral vs smiling photo, 82 London training identities): a face that already is that person
# is not pulled toward the reference's expression and lighting, or toward the degraded face's blur.
SAME_PERSON_SIMILARITY = {"dlib": 0.988}

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
    similarity_before: Optional[torch.Tensor] = None  # identity network cos(decoded, target) before / after
    similarity_after: Optional[torch.Tensor] = None
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RefineRun:
    """What a run refines with, beside the faces and the user's RefineOptions."""
    restorer: Any = None                        # the lookup's restorer handle (decodes latents)
    prior: Optional[torch.nn.Module] = None     # LatentScoreModel; None = only identity guidance changes the latent
    id_model: Optional[torch.nn.Module] = None  # IdentityModel (ArcFace or dlib [+ IRN + mask]); None = no guidance
    reference: Optional[ReferenceFace] = None   # the reference photo's face, at the faces' crop size
    device: Optional[Union[str, torch.device]] = None  # None = the models' device
    seed: int = 0
    should_stop: Optional[Callable[[], bool]] = None   # polled at every denoiser step (host cancel)
    progress: Optional[Callable[[int, int], None]] = None  # progress(done, total) at every denoiser step
    batch_size: int = 8
    decoder: Optional[Callable] = None          # decoder(restorer, latent, index) -> Decoder (default restorer_decoder)


@dataclass
class _Guidance:
    """The identity guidance of one refine call, per face."""
    guided: bool
    landmarks: torch.Tensor                 # [N,5,2] crop fractions
    strengths: Optional[torch.Tensor] = None  # [N] identity strength per face
    target: Optional[torch.Tensor] = None   # [N,D] unit target embeddings
    mask: Optional[torch.Tensor] = None     # [N,1,h,w]
    margin: Optional[float] = None
    target_source: str = ""
    mask_source: str = ""


@dataclass
class _Job:
    """What every batch of faces of one refine call is sampled with."""
    run: RefineRun
    latent: FaceLatent
    sigmas: torch.Tensor
    sample: Callable
    make_decoder: Callable
    device: torch.device
    tick: Callable[[], None]
    index_offset: int
    fresh: set          # step indices that compute a fresh identity gradient
    views: int
    guidance: Optional[_Guidance] = None


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


def refine(face_crops: FaceCrops, latent: FaceLatent, run: RefineRun, options: RefineOptions,
           lq_crops: Optional[torch.Tensor] = None, index_offset: int = 0) -> FaceCrops:
    """Identity-guided latent refinement of the lookup result -> the refined FaceCrops.

    face_crops/latent: the lookup step's outputs. run: the restorer, prior, identity network, reference face,
    device, seed and callbacks (RefineRun). options: steps/strength (SDEdit steps and noise level: 0 steps or
    strength 0 return ``face_crops`` unchanged, but for a reference's detail), identity_strength (total size of
    the identity update, in latent standard deviations), target, guidance_steps, identity_views,
    reference_detail, gate_by_detail (RefineOptions). lq_crops: the degraded crops (identity target; default
    ``latent.lq_crops``). index_offset: the index of the first of these faces in the run (each face's seed).
    """
    return refine_latent(face_crops, latent, run, options, lq_crops, index_offset).crops


def refine_latent(face_crops: FaceCrops, latent: FaceLatent, run: RefineRun, options: RefineOptions,
                  lq_crops: Optional[torch.Tensor] = None, index_offset: int = 0) -> RefineResult:
    """``refine`` with the refined latent, the mask, the identity target and similarities (RefineResult)."""
    n = len(face_crops)
    if len(latent) != n:
        raise FaceRefineError(f"FACE_LATENT holds {len(latent)} faces but FACE_CROPS holds {n}; "
                              f"connect the outputs of the same lookup step")
    z_lookup = plain_tensor(latent.quantized.detach().float().cpu())
    sigmas_cfg = (run.prior.config.sigma_min, run.prior.config.sigma_max) if run.prior is not None else (0.002, 80.0)
    sigmas = sdedit_sigmas(int(options.steps), float(options.strength), *sigmas_cfg)
    if n == 0 or len(sigmas) < 2:
        return _unrefined(face_crops, z_lookup, run, options)
    _check_latent(z_lookup, latent, run)
    fresh, views = _guidance_counts(options, len(sigmas) - 1)
    device = torch.device(run.device) if run.device is not None else _module_device(run.prior, run.id_model)
    job = _Job(run, latent, sigmas, get_sampler(options.sampler), run.decoder or restorer_decoder, device,
               lambda: None, index_offset, fresh, views)
    job.guidance = g = _plan_guidance(face_crops, latent, job, options, lq_crops)
    job.tick = _ticker(run, denoiser_steps(options.sampler, sigmas) * (2 if g.guided else 1)
                       * -(-n // run.batch_size))
    outs = [_refine_chunk(job, z_lookup[idx], idx) for idx in _batches(n, run.batch_size)]
    z_final = torch.cat([o[0] for o in outs])
    result = RefineResult(_decode_faces(job, face_crops, z_final, options), z_final, g.mask, g.mask_source,
                          g.target_source)
    if run.reference is not None and options.reference_detail > 0:
        result.crops, result.info["reference_detail"] = apply_reference_detail(
            result.crops, run.reference, run.id_model, options.reference_detail, device)
    if options.identity_strength:
        result.info["identity_strength_per_face"] = [round(float(v), 4) for v in g.strengths]
    if g.guided:
        result.similarity_before = torch.cat([o[1] for o in outs])
        result.similarity_after = _similarity(run.id_model, result.crops.crops, g.target, device, run.batch_size,
                                              g.landmarks)
        result.info["identity_network"] = getattr(run.id_model, "network", "arcface")
    return result


def _unrefined(face_crops: FaceCrops, z_lookup: torch.Tensor, run: RefineRun, options: RefineOptions):
    """No refine steps (or no faces): the lookup result, with the reference's detail when there is one."""
    result = RefineResult(face_crops, z_lookup, info={"skipped": True})
    if len(face_crops) and run.reference is not None and options.reference_detail > 0:
        result.crops, result.info["reference_detail"] = apply_reference_detail(
            face_crops, run.reference, run.id_model, options.reference_detail, run.device)
    return result


def _check_latent(z_lookup: torch.Tensor, latent: FaceLatent, run: RefineRun) -> None:
    if z_lookup.numel() == 0 or (hasattr(run.restorer, "codebook") and run.restorer.codebook is None):
        raise FaceRefineError(f"refine needs a codebook latent (CodeFormer or IQPFR restorer); "
                              f"{latent.architecture} has none to refine - set refine steps to 0")
    if run.prior is not None:
        try:
            run.prior.check_latent(z_lookup, latent.lq_features)
        except ValueError as err:
            raise FaceRefineError(f"{err}. Load the latent prior trained for this restorer, or none.") from None


def _guidance_counts(options: RefineOptions, n_steps: int) -> tuple[set, int]:
    """The steps that compute a fresh identity gradient (spread evenly) and the views per gradient."""
    guidance_steps = DEFAULT_GUIDANCE_STEPS if options.guidance_steps is None else int(options.guidance_steps)
    if guidance_steps < 1:
        raise FaceRefineError("guidance_steps must be >= 1 (use identity_strength 0 to turn guidance off)")
    views = DEFAULT_IDENTITY_VIEWS if options.identity_views is None else int(options.identity_views)
    if views < 1:
        raise FaceRefineError("identity_views must be >= 1 (1 = the decoded face alone)")
    count = min(guidance_steps, n_steps)
    return {k * n_steps // count for k in range(count)}, views


def _plan_guidance(face_crops: FaceCrops, latent: FaceLatent, job: _Job, options: RefineOptions,
                   lq_crops: Optional[torch.Tensor]) -> _Guidance:
    """Each face's identity target, mask and strength; faces already at the target get none."""
    run, device, n = job.run, job.device, len(face_crops)
    plan = _Guidance(float(options.identity_strength) != 0 and run.id_model is not None,
                     torch.from_numpy(crop_landmarks(face_crops)).float())
    if plan.guided:
        if lq_crops is None:
            lq_crops = latent.lq_crops
        if lq_crops is None:
            lq_crops = face_crops.crops  # no degraded crops kept: keep the lookup result's identity
        plan.target, plan.target_source = identity_target(
            run.id_model, options.target, n, reference=run.reference, lq_crops=lq_crops,
            lq_latent=plain_tensor(latent.lq_features.float()), device=device, landmarks=plan.landmarks)
        plan.mask, plan.mask_source = guidance_mask(face_crops, run.id_model, tuple(latent.quantized.shape[-2:]))
    strengths = torch.full((n,), float(options.identity_strength))
    if plan.guided and plan.target_source == "reference" and options.gate_by_detail:
        # toward a reference photo, each face is guided as much as it lacks detail: a sharp face already shows
        # its person, and guidance would only pull it toward the reference's expression and lighting
        from .reference_detail import face_deficit_weights
        weights = face_deficit_weights(face_crops.crops, run.reference, plan.landmarks.numpy())
        strengths = strengths * torch.tensor(weights, dtype=torch.float32)
    plan.margin = SAME_PERSON_SIMILARITY.get(getattr(run.id_model, "network", "")) if plan.guided else None
    if plan.margin is not None:  # faces already at the target's same-person similarity: no guidance
        before = _similarity(run.id_model, face_crops.crops, plan.target, device, run.batch_size, plan.landmarks)
        strengths = torch.where(before >= plan.margin, torch.zeros_like(strengths), strengths)
    plan.strengths = strengths
    plan.guided = plan.guided and bool(strengths.any())  # no face needs guidance: no gradients to pay for
    return plan


def _ticker(run: RefineRun, total_calls: int) -> Callable[[], None]:
    done = [0]

    def tick() -> None:
        if run.should_stop is not None and run.should_stop():
            raise RefineInterrupted("refine interrupted")
        done[0] += 1
        if run.progress is not None:
            run.progress(done[0], total_calls)
    return tick


def _batches(n: int, batch_size: int):
    return [torch.arange(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def _decode_faces(job: _Job, face_crops: FaceCrops, z_final: torch.Tensor, options: RefineOptions) -> FaceCrops:
    """The refined latents decoded, with the lookup's carried detail, as the step's FaceCrops."""
    latent, device = job.latent, job.device
    with torch.inference_mode(), _autocast(device):
        images = []
        for idx in _batches(len(face_crops), job.run.batch_size):
            dec = job.make_decoder(job.run.restorer, latent, idx)
            images.append(dec(z_final[idx].to(device)).float().cpu())
    step = f"refine:{options.sampler}x{int(options.steps)}@{float(options.strength):g}"
    lq = latent.lq_crops if latent.lq_crops is not None else face_crops.crops
    refined = face_crops.with_crops(
        carry_detail(torch.cat(images), lq, int(latent.extra.get("img_size", lq.shape[-1])), latent.fidelity), step)
    exemplar_amount = float(latent.extra.get("exemplar_detail", 0.0))
    if exemplar_amount > 0 and job.run.reference is None:  # a reference photo gives its own (same person) detail
        detailed, _ = apply_exemplar_detail(refined, exemplar_amount)
        if detailed is not refined:
            refined = face_crops.with_crops(detailed.crops, step + "+exemplar-detail")
    return refined


def apply_reference_detail(face_crops: FaceCrops, reference: ReferenceFace, id_model,
                           amount: float = DEFAULT_REFERENCE_DETAIL, device=None):
    """The reference face's fine detail into ``face_crops`` -> (FaceCrops, DetailReport). With an identity
    model, only the reference's person takes detail (``reference_detail.same_person``)."""
    from .reference_detail import same_person, transfer_reference_detail
    landmarks = crop_landmarks(face_crops)
    match = None
    if id_model is not None:
        device = torch.device(device) if device is not None else _module_device(id_model)
        match = same_person(id_model, face_crops, torch.from_numpy(landmarks).float(), reference, device)
    return transfer_reference_detail(face_crops, reference, amount, landmarks, match)


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


def _refine_chunk(job: _Job, z0: torch.Tensor, idx: torch.Tensor):
    """One batch of faces -> (refined latent [n,C,h,w] on the CPU, their first similarities or None)."""
    prior, device, seed = job.run.prior, job.device, int(job.run.seed)
    z0 = z0.to(device)
    if prior is not None:
        x_anchor = prior.normalize(z0)
        cond = prior.normalize_cond(plain_tensor(job.latent.lq_features[idx].float().to(device)))
        to_latent = prior.denormalize
    else:
        x_anchor, cond, to_latent = z0, None, (lambda x: x)
    first = int(idx[0]) + int(job.index_offset)
    noise = _face_noise(len(idx), z0.shape[1:], seed, first).to(device)
    x_start = x_anchor + float(job.sigmas[0]) * noise

    def prior_denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        if prior is None:  # no prior: trust the lookup, i.e. the noise added is the noise to remove
            return x - sigma * noise
        with torch.no_grad(), _autocast(device):
            return prior(x, torch.full((x.shape[0],), sigma, device=device), cond).float()

    def plain(x, sigma, i):
        job.tick()
        return prior_denoise(x, sigma)

    generator = torch.Generator().manual_seed(seed + first)
    if not job.guidance.guided:
        return to_latent(job.sample(plain, x_start.clone(), job.sigmas, generator=generator)).float().cpu(), None
    trajectory: list[torch.Tensor] = []
    job.sample(plain, x_start.clone(), job.sigmas, generator=generator,
               after_step=lambda i, x: trajectory.append(x.clone()) or x)
    z, first_sim = _guided_sample(job, idx, x_start, trajectory, first, prior_denoise, to_latent)
    return to_latent(z).float().cpu(), first_sim


def _guided_sample(job: _Job, idx: torch.Tensor, x_start: torch.Tensor, trajectory: list, first: int,
                   prior_denoise: Callable, to_latent: Callable):
    """The guided trajectory of one batch from ``x_start`` (``first``: the run index of its first face).
    Positions outside the mask are put back on the unguided ``trajectory`` after every step."""
    device, seed, sigmas, g = job.device, int(job.run.seed), job.sigmas, job.guidance
    decode_raw = job.make_decoder(job.run.restorer, job.latent, idx)
    goal = IdentityGoal(g.target[idx].to(device), g.mask[idx].to(device), g.landmarks[idx], g.margin)
    strength, sigma0 = g.strengths[idx], float(sigmas[0])

    def decode_face(x: torch.Tensor) -> torch.Tensor:
        with _autocast(device):
            return decode_raw(to_latent(x)).float()

    cache: dict = {}
    first_sim: list = []
    view_generators = [torch.Generator().manual_seed((seed * 7919 + first + i + 1) % (2 ** 63))
                       for i in range(len(idx))]

    def guided_denoise(x, sigma, i):
        job.tick()
        x0 = prior_denoise(x, sigma)
        if i not in cache:
            if i in job.fresh or "last" not in cache:
                with _autocast(device):
                    grad, sim = identity_gradient(x0, decode_face, job.run.id_model, goal, job.views, view_generators)
                cache["last"] = grad
                if not first_sim:
                    first_sim.append(sim.float().cpu())
            weight = strength.to(device).view(-1, 1, 1, 1) * (float(sigmas[i]) - float(sigmas[i + 1])) / sigma0
            cache[i] = weight * cache["last"]
        return x0 + cache[i]

    keep = goal.mask.bool()
    z = job.sample(guided_denoise, x_start.clone(), sigmas, generator=torch.Generator().manual_seed(seed + first),
                   after_step=lambda i, x: torch.where(keep, x, trajectory[i]))
    return z, first_sim[0]


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


__all__ = ["RefineInterrupted", "RefineResult", "RefineRun", "SAME_PERSON_SIMILARITY", "apply_reference_detail",
           "plain_tensor", "refine", "refine_latent", "restorer_decoder", "select_latent"]
