"""ComfyUI nodes of the refine step: Identity Latent Refine + loaders for the latent prior and ID model."""
from __future__ import annotations

import contextlib
import dataclasses

from ..core import controls
from ..core.controls import is_none
from . import conventions as nc

ID_NETWORK_CHOICES = ["auto", "dlib"]


def _with_default(names: list, default: str) -> list:
    return names if default in names else [default] + names


class FaceRefineIdentityLatentRefine:
    @classmethod
    def INPUT_TYPES(cls):
        from ..core.refine.options import DEFAULT_GUIDANCE_STEPS, DEFAULT_IDENTITY_VIEWS, DEFAULT_STEPS
        return {
            "required": {
                "face_crops": ("FACE_CROPS", {"tooltip": nc.tooltip("face_crops")}),
                "face_latent": ("FACE_LATENT", {"tooltip": nc.tooltip("face_latent")}),
                "restorer": ("FACEREFINE_RESTORER", {"tooltip": "The restorer used by the lookup (decodes latents)."}),
                "latent_prior": ("FACEREFINE_LATENT_PRIOR", {"tooltip": "Latent score model (or none)."}),
                "id_model": ("FACEREFINE_ID_MODEL", {"tooltip": "Identity network: ArcFace or the embedded dlib "
                                                                "ResNet (+ trained identity recovery)."}),
                # this node is the refine step itself: its steps default to refine's DEFAULT_STEPS, not 0 (off)
                "steps": controls.comfy_input("refine_steps", default=DEFAULT_STEPS,
                                              tooltip="Denoising steps; 0 returns the lookup result unchanged."),
                "strength": controls.comfy_input("refine_strength"),
                "identity_strength": controls.comfy_input("identity_strength"),
                "sampler": controls.comfy_input("sampler"),
                "seed": controls.comfy_input("seed"),
                "identity_target": controls.comfy_input(
                    "identity_target", tooltip="auto = reference if connected, else the recovery network if "
                                               "trained, else the degraded face."),
                "device": (nc.DEVICE_CHOICES, {"default": "auto", "tooltip": nc.tooltip("device")}),
                "face_batch": ("INT", {"default": 8, "min": 1, "max": 64, "tooltip": nc.tooltip("face_batch")}),
                "guidance_steps": controls.comfy_input(
                    "guidance_steps", default=DEFAULT_GUIDANCE_STEPS,
                    tooltip="Steps that compute a fresh identity gradient (each costs a decoder forward+backward); "
                            "= steps for every step."),
            },
            "optional": {
                "reference_detail": controls.comfy_input(
                    "reference_detail", tooltip="With a reference photo: how much of its fine detail (eyes, brows, "
                                                "lips) goes into faces that lost theirs; sharp faces are left alone. "
                                                "Works with refine steps 0 as well."),
                "identity_views": controls.comfy_input(
                    "identity_views", default=DEFAULT_IDENTITY_VIEWS,
                    tooltip="Augmented views (re-framed, blurred) of the face averaged into each identity gradient; "
                            "more views keep what is identity and drop patterns only the guide network sees."),
                "reference": ("IMAGE", {"tooltip": "Photo of the same person; its face is aligned like the crops, "
                                                   "becomes the identity target and lends its fine detail. With "
                                                   "steps 0 only the detail is used: measured best on mildly and "
                                                   "medium damaged faces, and 35x cheaper."}),
            },
        }

    RETURN_TYPES = ("FACE_CROPS",)
    RETURN_NAMES = ("face_crops",)
    FUNCTION = "refine"
    CATEGORY = nc.CATEGORY_STEPS
    DESCRIPTION = ("CLR-Face identity-guided latent refinement: re-noises the lookup latent, denoises it with the "
                   "latent prior, and pulls the facial-feature latents toward the identity target.")

    def refine(self, face_crops, face_latent, restorer, latent_prior, id_model, **values):
        return (refine_faces(face_crops, face_latent, (restorer, latent_prior, id_model), values),)


# the node's inputs that are not RefineOptions fields (the rest are, identity_target as ``target``), with the
# defaults of the first node version
RUN_INPUTS = {"seed": 0, "device": "auto", "face_batch": 8, "reference": None}


def refine_faces(face_crops, face_latent, models: tuple, values: dict):
    """The node's work: RefineOptions from the inputs; nothing to do (no steps or no strength, and no reference
    detail to lend) returns the faces as they are; else refine in batches of face_batch on ComfyUI's device."""
    from ..core.refine.options import DEFAULT_REFERENCE_DETAIL, RefineOptions
    values = {"guidance_steps": 1, **values}
    run = {k: values.pop(k, default) for k, default in RUN_INPUTS.items()}
    values["target"] = values.pop("identity_target", "auto")
    if values.get("reference_detail") is None:
        values["reference_detail"] = DEFAULT_REFERENCE_DETAIL
    options = RefineOptions(**values)
    detail_only = options.steps <= 0 or options.strength <= 0
    if face_crops.is_empty or (detail_only and (run["reference"] is None or options.reference_detail <= 0)):
        return face_crops
    if detail_only:
        options = dataclasses.replace(options, steps=0)  # only the reference photo's detail
    return _refine_batches(face_crops, face_latent, models, options, run)


def _refine_batches(face_crops, face_latent, models: tuple, options, run: dict):
    from ..core.crop.options import CropOptions
    from ..core.refine.reference import ReferenceFace
    from ..core.refine.refine import RefineRun, refine, select_latent
    from ..core.refine.samplers import denoiser_steps, sdedit_sigmas
    restorer, latent_prior, id_model = models
    dev = nc.get_device(run["device"])
    guided = options.identity_strength and id_model is not None
    per_face = denoiser_steps(options.sampler, sdedit_sigmas(options.steps, options.strength)) * (2 if guided else 1)
    progress = nc.Progress(per_face * len(face_crops))
    lq_crops = face_latent.lq_crops

    def run_batch(start, stop):
        idx = list(range(start, stop))
        base = progress.done

        def report(done, total):
            progress.absolute(base + done)
        return refine(face_crops.select(idx), select_latent(face_latent, idx),
                      dataclasses.replace(refine_run, progress=report, batch_size=stop - start), options,
                      None if lq_crops is None else lq_crops[start:stop], start)

    with contextlib.ExitStack() as stack:
        stack.enter_context(nc.autograd())  # identity guidance needs gradients; ComfyUI runs in inference mode
        for m in (m for m in (latent_prior, id_model, restorer) if m is not None and hasattr(m, "to")):
            stack.enter_context(nc.on_device(m, dev))
        reference = run["reference"]
        face = (None if reference is None else
                ReferenceFace.from_photo(reference, face_crops.crop_size, CropOptions(device=str(dev))))
        refine_run = RefineRun(restorer, latent_prior, id_model, face, dev, run["seed"], nc.should_stop)
        parts = nc.map_batches(run_batch, len(face_crops), run["face_batch"])
    return _concat(face_crops, parts)


def _concat(original, parts):
    import torch
    crops = torch.cat([p.crops for p in parts])
    history = parts[0].history if parts else original.history
    return dataclasses.replace(original, crops=crops, history=history)


class FaceRefineLatentPriorLoader:
    @classmethod
    def INPUT_TYPES(cls):
        names = [nc.NO_FILE] + nc.list_weights_for("facerefine", "FaceRefine-LatentPrior")
        return {"required": {"prior_name": (names, {
            "default": nc.NO_FILE,
            "tooltip": "Latent score model (models/facerefine). (none) = identity guidance only."})}}

    RETURN_TYPES = ("FACEREFINE_LATENT_PRIOR",)
    RETURN_NAMES = ("latent_prior",)
    FUNCTION = "load"
    CATEGORY = nc.CATEGORY_LOADERS
    DESCRIPTION = ("Loads the latent score model (CLR-Face diffusion prior over the restorer's clean latents) "
                   "for Identity Latent Refine. (none) = identity guidance only.")

    def load(self, prior_name):
        if is_none(prior_name):
            return (None,)
        from ..models.arch.latent_prior import load_latent_prior
        path = nc.weights_path(prior_name, "facerefine")
        return (nc.cached_model(path, "cpu", lambda: load_latent_prior(path, "cpu"), "latent_prior"),)


class FaceRefineIdModelLoader:
    @classmethod
    def INPUT_TYPES(cls):
        arcface = [c for c in ID_NETWORK_CHOICES] + [
            n for n in _with_default(nc.list_weights_for("facedetection", "ArcFace-IR-SE50"),
                                     "recognition_arcface_ir_se50.pth") if n not in ID_NETWORK_CHOICES]
        return {"required": {
            "arcface": (arcface, {"default": "auto",
                                  "tooltip": "Identity network. auto = ArcFace IR-SE50 if its file is in "
                                             "models/facedetection, else dlib's face-recognition ResNet embedded "
                                             "in the pack (CC0, no download); dlib = always the embedded one; "
                                             "or an ArcFace file."}),
            "identity_recovery": ([nc.NO_FILE] + nc.list_weights_for("facerefine", "FaceRefine-IdentityRecovery"), {
                "default": nc.NO_FILE,
                "tooltip": "Trained Identity Recovery Network + latent mask (optional)."}),
        }}

    RETURN_TYPES = ("FACEREFINE_ID_MODEL",)
    RETURN_NAMES = ("id_model",)
    FUNCTION = "load"
    CATEGORY = nc.CATEGORY_LOADERS
    DESCRIPTION = ("Loads the identity network (ArcFace when present, else dlib's embedded face-recognition "
                   "ResNet, CC0) and, optionally, the trained Identity Recovery Network with its learned latent "
                   "mask, for Identity Latent Refine.")

    def load(self, arcface="auto", identity_recovery=nc.NO_FILE):
        from ..models.arch.identity import load_id_model, resolve_id_model
        choice = resolve_id_model(arcface)  # auto -> arcface when its file is present, else dlib
        if choice == "dlib":
            arc_path = nc.weights_path("dlib-face-recognition", "facerefine")
        else:
            arc_path = nc.weights_path("arcface" if choice == "arcface" else choice, "facedetection")
        rec_path = None if is_none(identity_recovery) else nc.weights_path(identity_recovery,
                                                                                            "facerefine")
        model = nc.cached_model(arc_path, "cpu",
                                lambda: load_id_model(str(arc_path), "cpu", rec_path and str(rec_path)),
                                "id_model", str(rec_path))
        return (model,)


NODES = {
    "FaceRefineIdentityLatentRefine": (FaceRefineIdentityLatentRefine, "FaceRefine Identity Latent Refine"),
    "FaceRefineLatentPriorLoader": (FaceRefineLatentPriorLoader, "FaceRefine Load Latent Prior"),
    "FaceRefineIdModelLoader": (FaceRefineIdModelLoader, "FaceRefine Load ID Model"),
}
