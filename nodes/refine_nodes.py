"""ComfyUI nodes of the refine step: Identity Latent Refine + loaders for the latent prior and ID model."""
from __future__ import annotations

import contextlib

from ..core import controls
from . import runtime as rt

NONE_CHOICE = "(none)"
SAMPLER_CHOICES = list(controls.SAMPLERS)
TARGET_CHOICES = list(controls.BY_NAME["identity_target"].choices)
ID_NETWORK_CHOICES = ["auto", "dlib"]


def _with_default(names: list, default: str) -> list:
    return names if default in names else [default] + names


class FaceRefineIdentityLatentRefine:
    @classmethod
    def INPUT_TYPES(cls):
        from ..core.refine.refine import DEFAULT_GUIDANCE_STEPS, DEFAULT_IDENTITY_VIEWS, DEFAULT_STEPS
        return {
            "required": {
                "face_crops": ("FACE_CROPS", {"tooltip": rt.tooltip("face_crops")}),
                "face_latent": ("FACE_LATENT", {"tooltip": rt.tooltip("face_latent")}),
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
                "device": (rt.DEVICE_CHOICES, {"default": "auto", "tooltip": rt.tooltip("device")}),
                "face_batch": ("INT", {"default": 8, "min": 1, "max": 64, "tooltip": rt.tooltip("face_batch")}),
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
    CATEGORY = rt.CATEGORY_STEPS
    DESCRIPTION = ("CLR-Face identity-guided latent refinement: re-noises the lookup latent, denoises it with the "
                   "latent prior, and pulls the facial-feature latents toward the identity target.")

    def refine(self, face_crops, face_latent, restorer, latent_prior, id_model, steps, strength,
               identity_strength, sampler, seed, identity_target="auto", device="auto", face_batch=8,
               guidance_steps=1, reference=None, identity_views=None, reference_detail=None):
        from ..core.refine import refine, select_latent
        from ..core.refine.samplers import denoiser_steps, sdedit_sigmas
        from ..core.refine.refine import DEFAULT_REFERENCE_DETAIL
        detail = DEFAULT_REFERENCE_DETAIL if reference_detail is None else float(reference_detail)
        if face_crops.is_empty or ((steps <= 0 or strength <= 0) and (reference is None or detail <= 0)):
            return (face_crops,)
        if steps <= 0 or strength <= 0:
            steps = 0  # only the reference photo's detail
        dev = rt.get_device(device)
        sigmas = sdedit_sigmas(steps, strength)
        per_face = denoiser_steps(sampler, sigmas) * (2 if identity_strength and id_model is not None else 1)
        progress = rt.Progress(per_face * len(face_crops))
        lq_crops = face_latent.lq_crops
        modules = [m for m in (latent_prior, id_model, restorer) if m is not None and hasattr(m, "to")]

        def run(start, stop):
            idx = list(range(start, stop))
            base = progress.done

            def report(done, total):
                progress.absolute(base + done)
            return refine(face_crops.select(idx), select_latent(face_latent, idx), restorer, latent_prior,
                          id_model, steps=steps, strength=strength, identity_strength=identity_strength,
                          reference=reference, sampler=sampler, seed=seed, progress=report,
                          should_stop=rt.should_stop, target=identity_target, device=dev,
                          lq_crops=None if lq_crops is None else lq_crops[start:stop],
                          batch_size=stop - start, index_offset=start, guidance_steps=guidance_steps,
                          identity_views=identity_views, reference_detail=detail)

        with contextlib.ExitStack() as stack:
            stack.enter_context(rt.autograd())  # identity guidance needs gradients; ComfyUI runs in inference mode
            for m in modules:
                stack.enter_context(rt.on_device(m, dev))
            parts = rt.map_batches(run, len(face_crops), face_batch)
        return (_concat(face_crops, parts),)


def _concat(original, parts):
    import dataclasses

    import torch
    crops = torch.cat([p.crops for p in parts])
    history = parts[0].history if parts else original.history
    return dataclasses.replace(original, crops=crops, history=history)


class FaceRefineLatentPriorLoader:
    @classmethod
    def INPUT_TYPES(cls):
        names = [NONE_CHOICE] + rt.list_weights_for("facerefine", "FaceRefine-LatentPrior")
        return {"required": {"prior_name": (names, {
            "default": NONE_CHOICE,
            "tooltip": "Latent score model (models/facerefine). (none) = identity guidance only."})}}

    RETURN_TYPES = ("FACEREFINE_LATENT_PRIOR",)
    RETURN_NAMES = ("latent_prior",)
    FUNCTION = "load"
    CATEGORY = rt.CATEGORY_LOADERS
    DESCRIPTION = ("Loads the latent score model (CLR-Face diffusion prior over the restorer's clean latents) "
                   "for Identity Latent Refine. (none) = identity guidance only.")

    def load(self, prior_name):
        if prior_name in (None, "", NONE_CHOICE):
            return (None,)
        from ..models.arch.latent_prior import load_latent_prior
        path = rt.weights_path(prior_name, "facerefine")
        return (rt.cached_model(path, "cpu", lambda: load_latent_prior(path, "cpu"), "latent_prior"),)


class FaceRefineIdModelLoader:
    @classmethod
    def INPUT_TYPES(cls):
        arcface = [c for c in ID_NETWORK_CHOICES] + [
            n for n in _with_default(rt.list_weights_for("facedetection", "ArcFace-IR-SE50"),
                                     "recognition_arcface_ir_se50.pth") if n not in ID_NETWORK_CHOICES]
        return {"required": {
            "arcface": (arcface, {"default": "auto",
                                  "tooltip": "Identity network. auto = ArcFace IR-SE50 if its file is in "
                                             "models/facedetection, else dlib's face-recognition ResNet embedded "
                                             "in the pack (CC0, no download); dlib = always the embedded one; "
                                             "or an ArcFace file."}),
            "identity_recovery": ([NONE_CHOICE] + rt.list_weights_for("facerefine", "FaceRefine-IdentityRecovery"), {
                "default": NONE_CHOICE,
                "tooltip": "Trained Identity Recovery Network + latent mask (optional)."}),
        }}

    RETURN_TYPES = ("FACEREFINE_ID_MODEL",)
    RETURN_NAMES = ("id_model",)
    FUNCTION = "load"
    CATEGORY = rt.CATEGORY_LOADERS
    DESCRIPTION = ("Loads the identity network (ArcFace when present, else dlib's embedded face-recognition "
                   "ResNet, CC0) and, optionally, the trained Identity Recovery Network with its learned latent "
                   "mask, for Identity Latent Refine.")

    def load(self, arcface="auto", identity_recovery=NONE_CHOICE):
        from ..models.arch.identity import load_id_model, resolve_id_model
        choice = resolve_id_model(arcface)  # auto -> arcface when its file is present, else dlib
        if choice == "dlib":
            arc_path = rt.weights_path("dlib-face-recognition", "facerefine")
        else:
            arc_path = rt.weights_path("arcface" if choice == "arcface" else choice, "facedetection")
        rec_path = None if identity_recovery in (None, "", NONE_CHOICE) else rt.weights_path(identity_recovery,
                                                                                            "facerefine")
        model = rt.cached_model(arc_path, "cpu", lambda: load_id_model(str(arc_path), rec_path and str(rec_path)),
                                "id_model", str(rec_path))
        return (model,)


NODES = {
    "FaceRefineIdentityLatentRefine": (FaceRefineIdentityLatentRefine, "FaceRefine Identity Latent Refine"),
    "FaceRefineLatentPriorLoader": (FaceRefineLatentPriorLoader, "FaceRefine Load Latent Prior"),
    "FaceRefineIdModelLoader": (FaceRefineIdModelLoader, "FaceRefine Load ID Model"),
}
