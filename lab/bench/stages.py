"""The bench stages: each takes the run context and the report so far and returns its figures."""
from __future__ import annotations

import inspect
from typing import Callable

import torch

from ...core.refine import options as refine_options
from ...core.refine.options import RefineOptions
from ...core.refine.reference import ReferenceFace
from ...core.refine.refine import RefineRun, refine
from ...core import score as score_mod
from ...core.crop.options import CropOptions
from ...core.types import RawDetections
from ...core.crop.step import align_faces, detect_faces
from ...core.detail.exemplars import apply_exemplar_detail
from ...core.lookup.lookup import decode, lookup
from ...core.lookup.options import LookupOptions
from ...core.paste.options import PasteOptions
from ...core.paste.step import paste_back
from .measure import measure_interleaved, module_bytes
from .setup import (FFHQ_5_POINTS_512, FULL_CROP, BenchContext, RestorerSetup, StageUnavailable, group_photo,
                    inference_context, nested_get, one_face_image, setup_restorer, synthetic_face_crops)


def _inference(fn, *args):
    with torch.inference_mode():
        return fn(*args)


def stage_lookup(ctx: BenchContext, report: dict) -> dict:
    """Bare forward and lookup (steering off, then defaults) per batch size, interleaved."""
    setup: RestorerSetup = ctx.cached("restorer", lambda: setup_restorer(ctx))
    size = setup.input_size
    cl = torch.channels_last if setup.layout == "channels_last" else torch.contiguous_format
    defaults = {k: p.default for k, p in inspect.signature(lookup).parameters.items()
                if p.default is not inspect.Parameter.empty}
    bare_rows, off_rows, default_rows = {}, {}, {}
    flops_face, exemplar = {}, None
    for b in ctx.opts.batches:
        crops = synthetic_face_crops(b, size, seed=b)
        crops = crops.__class__(crops.crops.to(ctx.device), crops.faces, crops.crop_size)
        x = (crops.crops * 2 - 1).contiguous(memory_format=cl)
        off = LookupOptions(quality=1.0, fidelity=0.5, mode="off", exemplar_detail=0.0)  # the network's own cost
        fns = {"bare": lambda x=x: _inference(setup.bare, x),
               "lookup_off": lambda c=crops: lookup(c, setup.handle, off)}
        if b == 1:  # exemplar detail on a face with no fine detail (the whole transfer runs)
            fns["exemplar_detail"] = lambda c=_without_detail(crops): apply_exemplar_detail(c, 1.0)
        if b == 1 and ctx.opts.steering:
            fns["lookup_default"] = lambda c=crops: lookup(c, setup.handle)
        ctx.log(f"lookup: batch {b} ({', '.join(fns)})")
        res = ctx.measure(fns, count_flops=(b == 1))
        if b == 1:
            flops_face = {k: m.flops for k, m in res.items()}
            exemplar = res.get("exemplar_detail")
        for name, rows in (("bare", bare_rows), ("lookup_off", off_rows), ("lookup_default", default_rows)):
            if name not in res:
                continue
            m = res[name]
            if m.flops is None and flops_face.get(name):
                m.flops = flops_face[name] * b
            rows[b] = m
    report["bare"] = {"description": "module forward of the same network on [N,3,S,S] -1..1 input, first output "
                                     "(what spandrel's ImageModelDescriptor calls)",
                      "batch": {str(b): m.summary(b) for b, m in bare_rows.items()}}
    out: dict = {"input_size": size, "lookup_defaults": {k: repr(v) for k, v in defaults.items()},
                 "steering_off": {}, "defaults": {}}
    for label, rows in (("steering_off", off_rows), ("defaults", default_rows)):
        for b, m in rows.items():
            row = m.summary(b)
            row["ratio_to_bare"] = round(m.median / bare_rows[b].median, 4)
            out[label][str(b)] = row
    if not ctx.opts.steering:
        out["defaults"] = {"status": "skipped", "reason": "lookup at its defaults (quality steering: ~2 rounds "
                           "of gradient + trial decodes) is not timed on full-size CPU runs; pass --steering"}
    summary = {}
    if off_rows.get(1):
        summary["overhead_vs_bare_batch1"] = round(off_rows[1].median / bare_rows[1].median - 1, 4)
    if exemplar is not None:
        summary["exemplar_detail_s_per_face"] = round(exemplar.median, 4)
        summary["exemplar_detail_over_bare"] = round(exemplar.median / bare_rows[1].median, 4)
    if default_rows.get(1):
        summary["defaults_ratio_to_bare_batch1"] = round(default_rows[1].median / bare_rows[1].median, 4)
    for rows, label in ((bare_rows, "bare"), (off_rows, "lookup")):
        if 1 in rows:
            for b, m in rows.items():
                if b > 1:
                    summary[f"{label}_faces_per_s_batch{b}_over_batch1"] = round(
                        (b / m.median) / (1 / rows[1].median), 3)
    out["summary"] = summary
    return out


def _without_detail(crops):
    """The crops Gaussian-blurred (sigma 6 px at 512²): what a restorer returns for a face with no detail left."""
    import torchvision.transforms.functional as TF
    sigma = 6.0 * crops.crop_size / 512
    blurred = TF.gaussian_blur(crops.crops.float().cpu(), [int(sigma * 6) | 1] * 2, [sigma, sigma])
    return crops.with_crops(blurred, "blurred")


def _placed_detections(size: int, faces: int):
    """Detections at known places (one face per tile), for when the detector has no real face to find."""
    tile = size // faces
    marks, boxes = [], []
    for i in range(faces):  # a face half a tile wide in the middle of each tile
        x0, y0 = i * tile + tile / 4, (size - tile) / 2 + tile / 4
        marks.append(torch.tensor(FFHQ_5_POINTS_512) * (tile / 2) / 512 + torch.tensor([x0, y0]))
        boxes.append(torch.tensor([x0, y0, x0 + tile / 2, y0 + tile / 2]))
    return [RawDetections(torch.stack(boxes).float(), torch.ones(faces), torch.stack(marks).float())]


def stage_detect_align_paste(ctx: BenchContext, report: dict) -> dict:
    """Cost per image of detection, alignment and paste-back: one image with 3 faces (1024^2; 512^2 --tiny)."""
    size, n_faces = (512 if ctx.opts.tiny else 1024), 3
    image, source = group_photo(size, n_faces)
    options = CropOptions(device=str(ctx.device))
    detections = detect_faces(image, options)
    found = sum(int(d.boxes.shape[0]) for d in detections)
    note = ""
    if found != n_faces:
        note = f"detector found {found} of {n_faces} faces in '{source}'; align/paste use placed landmarks"
        detections = _placed_detections(size, n_faces)
    crops = align_faces(image, detections, options)
    paste_options = PasteOptions(device=str(ctx.device))
    fns = {"detect": lambda: detect_faces(image, options), "align": lambda: align_faces(image, detections, options),
           "paste": lambda: paste_back(image, crops, paste_options)}
    res = ctx.measure(fns, repeats=ctx.opts.repeats if ctx.opts.tiny else max(ctx.opts.repeats, 3))
    out = {"image": [size, size], "faces": len(crops), "image_source": source, "detector": options.detector}
    for name, m in res.items():
        out[name] = m.summary(1, unit="image")
        out[name]["per_face_s"] = round(m.median / max(len(crops), 1), 6)
    if note:
        out["note"] = note
    total = sum(res[k].median for k in res)
    out["summary"] = {f"{k}_ms_per_image": round(res[k].median * 1e3, 2) for k in res}
    out["summary"]["detect_align_paste_ms_per_image"] = round(total * 1e3, 2)
    bare1 = nested_get(report, "bare", "batch", "1", "per_face_s")
    if bare1:
        out["summary"]["per_face_over_bare_forward"] = round(total / max(len(crops), 1) / bare1, 4)
    return out


def stage_score(ctx: BenchContext, report: dict) -> dict:
    """Scoring time per 512^2 face for each offline metric (4 faces per call)."""
    names = score_mod.OFFLINE_METRICS
    n = 2 if ctx.opts.tiny else 4
    size = 256 if ctx.opts.tiny else FULL_CROP
    crops = synthetic_face_crops(n, size, seed=7)
    out: dict = {"faces_per_call": n, "crop_size": size, "metrics": {}}
    fns, errors = {}, {}
    for name in names:
        try:
            metric = score_mod.get_metric(name, str(ctx.device))
        except Exception as err:  # a metric that cannot load offline is reported, not fatal
            errors[name] = f"{type(err).__name__}: {err}"
            continue
        fns[name] = lambda metric=metric: _inference(score_mod.score_face_crops, crops, metric)
        critic = getattr(metric, "critic", None)
        if callable(critic):
            x = crops.crops.to(ctx.device).requires_grad_(True)

            def critic_grad(critic=critic, x=x):
                with torch.enable_grad():
                    critic(x).sum().backward()
            fns[f"{name}:critic_forward_backward"] = critic_grad
    res = ctx.measure(fns, repeats=ctx.opts.repeats if ctx.opts.tiny else max(ctx.opts.repeats, 3)) if fns else {}
    for name, m in res.items():
        out["metrics"][name] = m.summary(n)
    for name, err in errors.items():
        out["metrics"][name] = {"status": "unavailable", "reason": err}
    out["summary"] = {f"{k}_ms_per_face": round(m.median / n * 1e3, 2) for k, m in res.items()}
    if not res:
        raise StageUnavailable(f"no offline metric loaded: {errors}")
    return out


def _refine_models(ctx: BenchContext, latent):
    """Random latent prior with the lookup latent's shapes and a random ArcFace IR-SE50 (in --tiny: the same
    facexlib classes with one unit per stage, as tests/refine_fixtures.py)."""
    from facexlib.recognition.arcface_arch import Backbone, bottleneck_IR_SE
    from ...models.arch.identity import ArcFaceEmbedder, IdentityModel, build_arcface_backbone
    from ...models.arch.latent_prior import build_latent_prior
    torch.manual_seed(0)
    c, h = int(latent.quantized.shape[1]), int(latent.quantized.shape[-1])
    overrides = dict(latent_channels=c, cond_channels=int(latent.lq_features.shape[1]), latent_size=h)
    backbone = build_arcface_backbone()
    if ctx.opts.tiny:
        overrides.update(hidden=32, depth=1, heads=2)
        backbone = Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se")
        backbone.body = torch.nn.Sequential(*[bottleneck_IR_SE(a, b, 2) for a, b in
                                              ((64, 64), (64, 128), (128, 256), (256, 512))])
    prior = build_latent_prior(**overrides).to(ctx.device).eval()
    id_model = IdentityModel(ArcFaceEmbedder(backbone)).to(ctx.device).eval()
    for p in list(prior.parameters()) + list(id_model.parameters()):
        p.requires_grad_(False)
    return prior, id_model


def _shipped_refine_models(ctx: BenchContext, handle, latent):
    """The prior and identity network refine itself loads for a restorer shipped with a paired prior
    (facerefine-compact, -v2): the shipped prior, the `auto` guide (ArcFace if on disk, else the embedded
    dlib ResNet) and the paired IRN. None when the restorer has no paired prior or it does not fit."""
    from ...core.refine.step import PAIRED_PRIORS, default_identity_recovery, load_prior
    from ...errors import WeightsNotFoundError
    from ...models.arch.identity import load_id_model, resolve_id_model
    from pathlib import Path
    name = str(getattr(handle, "name", ""))
    name = name if name in PAIRED_PRIORS else Path(name).name  # bench loads registry files by path
    if ctx.opts.tiny or name not in PAIRED_PRIORS:
        return None
    try:
        prior = load_prior(None, ctx.device, handle.architecture, name, [])
        if prior is None:
            return None
        prior.check_latent(latent.quantized, latent.lq_features)
        network = resolve_id_model("auto")
        id_model = load_id_model("auto", ctx.device, default_identity_recovery(name, network))
    except (ValueError, WeightsNotFoundError):
        return None
    for p in list(prior.parameters()) + list(id_model.parameters()):
        p.requires_grad_(False)
    return prior, id_model, f"shipped {PAIRED_PRIORS[name]}", \
        f"{network} (auto){' + IRN' if id_model.recovery is not None else ''}"


def stage_refine(ctx: BenchContext, report: dict) -> dict:
    """Refine cost per face at the default steps, next to the lookup cost of the same run."""
    setup: RestorerSetup = ctx.cached("restorer", lambda: setup_restorer(ctx))
    crops = synthetic_face_crops(1, setup.input_size, seed=11)
    restored, latent = lookup(crops, setup.handle, LookupOptions(quality=1.0, fidelity=0.5, mode="off"))
    shipped = _shipped_refine_models(ctx, setup.handle, latent)
    if shipped is not None:
        prior, id_model, prior_label, id_label = shipped
    else:
        prior, id_model = _refine_models(ctx, latent)
        prior_label = "random LatentScoreModel"
        id_label = "random ArcFace IR-SE" + (" (1 unit per stage)" if ctx.opts.tiny else "50")
    default_steps = refine_options.DEFAULT_STEPS
    steps = ctx.opts.refine_steps if ctx.opts.refine_steps is not None else default_steps
    cpu = ctx.device.type == "cpu"

    def run_refine(identity_strength):
        # identity guidance needs autograd: not under our inference_mode
        with torch.inference_mode(False):
            return refine(restored, latent, RefineRun(setup.handle, prior, id_model),
                          RefineOptions(steps=steps, identity_strength=identity_strength))

    def reference_detail():  # refine steps 0 + a reference photo (already aligned): identity check + transfer
        face = ReferenceFace.from_crops(crops, restored.crop_size)
        return refine(restored, latent, RefineRun(setup.handle, prior, id_model, face),
                      RefineOptions(steps=0, identity_strength=0.0))

    fns = {"guided": lambda: run_refine(refine_options.DEFAULT_IDENTITY_STRENGTH),
           "unguided": lambda: run_refine(0.0), "reference_detail": reference_detail}
    with torch.inference_mode(False):
        res = measure_interleaved(fns, ctx.device, 0 if cpu else ctx.opts.warmup, 1 if cpu else ctx.opts.repeats,
                                  count_flops=True, log=ctx.log)
    out = {"steps": steps, "default_steps": default_steps, "strength": refine_options.DEFAULT_STRENGTH,
           "identity_strength": refine_options.DEFAULT_IDENTITY_STRENGTH,
           "guidance_steps": refine_options.DEFAULT_GUIDANCE_STEPS,
           "identity_views": refine_options.DEFAULT_IDENTITY_VIEWS,
           "sampler": refine_options.DEFAULT_SAMPLER, "prior": prior_label, "id_model": id_label,
           "runs": {k: m.summary(1) for k, m in res.items()},
           "note": "CPU: one timed run each, FLOPs counted during it" if cpu else ""}
    guided, unguided = res["guided"], res["unguided"]
    lookup_face = nested_get(report, "stages", "lookup", "steering_off", "1", "per_face_s")
    lookup_gflop = nested_get(report, "stages", "lookup", "steering_off", "1", "gflop_per_face")
    summary = {"refine_s_per_face": round(guided.median, 4), "refine_gflop_per_face": round((guided.flops or 0) / 1e9, 2),
               "unguided_s_per_face": round(unguided.median, 4),
               "unguided_gflop_per_face": round((unguided.flops or 0) / 1e9, 2),
               "guided_peak_increment_mib": round(guided.peak_increment / 2 ** 20, 1),
               "reference_detail_s_per_face": round(res["reference_detail"].median, 4)}
    if lookup_face:
        summary["lookup_s_per_face"] = lookup_face
        summary["refine_over_lookup"] = round(guided.median / lookup_face, 3)
        summary["unguided_over_lookup"] = round(unguided.median / lookup_face, 3)
        summary["reference_detail_over_lookup"] = round(res["reference_detail"].median / lookup_face, 3)
    if lookup_gflop:
        summary["refine_over_lookup_flops"] = round((guided.flops or 0) / 1e9 / lookup_gflop, 3)
        summary["unguided_over_lookup_flops"] = round((unguided.flops or 0) / 1e9 / lookup_gflop, 3)
    out["summary"] = summary
    return out


def stage_memory(ctx: BenchContext, report: dict) -> dict:
    """Peak memory of the lookup-only pipeline (detect, align, lookup at defaults, paste) for one face
    against the bare forward at batch 1, measured back to back."""
    setup: RestorerSetup = ctx.cached("restorer", lambda: setup_restorer(ctx))
    image, source = one_face_image()
    options = CropOptions(device=str(ctx.device), crop_size=FULL_CROP if setup.input_size >= 256 else 256)
    detections = detect_faces(image, options)
    if sum(int(d.boxes.shape[0]) for d in detections) == 0:
        detections = _placed_detections(image.shape[1], 1)
        source += " (placed landmarks)"
    paste_options = PasteOptions(device=str(ctx.device))
    x = (torch.rand(1, 3, setup.input_size, setup.input_size) * 2 - 1).to(ctx.device)

    lookup_kwargs = {} if ctx.opts.steering else {"mode": "off"}

    def pipeline():
        crops = align_faces(image, detections, options)
        restored, _latent = lookup(crops, setup.handle, LookupOptions(**lookup_kwargs))
        return paste_back(image, restored, paste_options)

    cpu = ctx.device.type == "cpu"
    res = ctx.measure({"bare": lambda: _inference(setup.bare, x), "pipeline": pipeline}, warmup=0 if cpu else 1,
                      repeats=1 if cpu and not ctx.opts.tiny else 2)
    weights = module_bytes(setup.bare_module)
    bare, pipe = res["bare"], res["pipeline"]
    out = {"image_source": source, "method": bare.memory_method, "weights_bytes": weights,
           "bare_peak_increment_bytes": bare.peak_increment, "pipeline_peak_increment_bytes": pipe.peak_increment,
           "pipeline_s": round(pipe.median, 4), "detect_excluded": "detection ran once before (its weights stay "
           "loaded); the timed chain is align -> lookup -> paste",
           "lookup_mode": "defaults" if ctx.opts.steering else "off (steering not timed: see lookup stage)"}
    out["summary"] = {
        "pipeline_over_bare_total": round((weights + pipe.peak_increment) / max(weights + bare.peak_increment, 1), 4),
        "pipeline_over_bare_increment": round(pipe.peak_increment / max(bare.peak_increment, 1), 4),
        "bare_peak_mib": round((weights + bare.peak_increment) / 2 ** 20, 1),
        "pipeline_peak_mib": round((weights + pipe.peak_increment) / 2 ** 20, 1),
    }
    return out


def _psnr(a: torch.Tensor, b: torch.Tensor) -> dict:
    diff = (a.float().cpu() - b.float().cpu()).abs()
    mse = float((diff ** 2).mean())
    return {"max_abs_diff": round(float(diff.max()), 5), "mean_abs_diff": round(float(diff.mean()), 6),
            "psnr_db": round(10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-12))).item(), 2)}


def stage_parity(ctx: BenchContext, report: dict) -> dict:
    """Lookup under autocast (bf16/fp16) against fp32 on the same faces.

    Two figures: the decoder on the same codes (the continuous path, where the tolerance applies), and the
    whole lookup, where a code whose top-2 logits are closer than bf16's rounding may flip (random weights
    have many such near ties; trained ones few), so its pixel difference is reported, not judged."""
    setup: RestorerSetup = ctx.cached("restorer", lambda: setup_restorer(ctx))
    low = ctx.dtype or torch.bfloat16
    if ctx.device.type == "cpu" and not ctx.opts.tiny and ctx.dtype is None:
        raise StageUnavailable("fp32 run on CPU: nothing to compare (use --dtype bf16 or --device cuda)")
    handle = setup.handle
    crops = synthetic_face_crops(2, setup.input_size, seed=3)
    saved = getattr(handle, "precision", "auto")
    try:
        handle.precision = "fp32"
        with inference_context(ctx.device, None):
            ref, ref_latent = lookup(crops, handle, LookupOptions(quality=1.0, fidelity=0.5, mode="off"))
            ref_dec = decode(handle, ref_latent.quantized, ref_latent.skip_features, ref_latent.fidelity)
        handle.precision = "auto"
        with inference_context(ctx.device, low):
            got, got_latent = lookup(crops, handle, LookupOptions(quality=1.0, fidelity=0.5, mode="off"))
            got_dec = decode(handle, ref_latent.quantized, ref_latent.skip_features, ref_latent.fidelity)
    finally:
        handle.precision = saved
    out = {"dtype": str(low).replace("torch.", ""), "decoder_same_codes": _psnr(got_dec, ref_dec),
           "whole_lookup": _psnr(got.crops, ref.crops),
           "tolerance": {"mean_abs_diff": round(PARITY_MEAN_ABS_TOL, 5), "psnr_db": PARITY_PSNR_DB,
                         "applies_to": "decoder_same_codes"}}
    if ref_latent.indices is not None and got_latent.indices is not None:
        out["code_indices_changed"] = round(float((ref_latent.indices.cpu() != got_latent.indices.cpu())
                                                  .float().mean()), 4)
    dec = out["decoder_same_codes"]
    out["within_tolerance"] = dec["mean_abs_diff"] <= PARITY_MEAN_ABS_TOL and dec["psnr_db"] >= PARITY_PSNR_DB
    out["summary"] = {"dtype": out["dtype"], "decoder_psnr_db": dec["psnr_db"],
                      "decoder_mean_abs_diff": dec["mean_abs_diff"], "within_tolerance": out["within_tolerance"],
                      "whole_lookup_psnr_db": out["whole_lookup"]["psnr_db"],
                      "code_indices_changed": out.get("code_indices_changed")}
    return out


# bf16 keeps 8 bits of mantissa: on 0..1 images a mean error under 1/255 and PSNR over 35 dB is invisible
PARITY_MEAN_ABS_TOL = 1 / 255
PARITY_PSNR_DB = 35.0



def stage_default_model(ctx: BenchContext, report: dict) -> dict:
    """The embedded default restorer (what `restore` uses with no community weights) at its defaults on one
    512² face, interleaved with the bare forward of the yardstick model (full-size CodeFormer by default)."""
    from ...models.restorers import load_restorer
    from ...models.registry import EMBEDDED_RESTORER
    setup: RestorerSetup = ctx.cached("restorer", lambda: setup_restorer(ctx))
    try:
        default = load_restorer(EMBEDDED_RESTORER, device=ctx.device)
    except Exception as err:  # weights absent in a stripped install
        raise StageUnavailable(f"embedded default restorer {EMBEDDED_RESTORER} could not load: {err}") from None
    crops = synthetic_face_crops(1, FULL_CROP, seed=1)
    crops = crops.__class__(crops.crops.to(ctx.device), crops.faces, crops.crop_size)
    x = synthetic_face_crops(1, setup.input_size, seed=1).crops.to(ctx.device) * 2 - 1  # --tiny: a small yardstick
    ctx.log(f"default model: {EMBEDDED_RESTORER} vs bare {setup.architecture}")
    res = ctx.measure({"bare": lambda: _inference(setup.bare, x),
                       "default_model": lambda: lookup(crops, default)}, count_flops=True)
    ratio = round(res["default_model"].median / res["bare"].median, 4)
    return {"restorer": EMBEDDED_RESTORER, "yardstick": setup.description,
            "bare": res["bare"].summary(1), "default_model": res["default_model"].summary(1),
            "summary": {"default_over_bare_batch1": ratio}}


STAGE_FUNCTIONS: dict[str, Callable[[BenchContext, dict], dict]] = {
    "lookup": stage_lookup,
    "default_model": stage_default_model,
    "detect_align_paste": stage_detect_align_paste,
    "score": stage_score,
    "refine": stage_refine,
    "memory": stage_memory,
    "parity": stage_parity,
}
