"""FaceRefine Restore (all-in-one): IMAGE + options -> IMAGE + MASK + report, on core.pipeline.restore_images."""
from __future__ import annotations

import contextlib
import dataclasses

from . import runtime as rt
from .crop_nodes import DETECTOR_CHOICES

NONE_CHOICE = "none"


class FaceRefineRestore:
    @classmethod
    def INPUT_TYPES(cls):
        rt.register_model_folders()
        restorers = rt.restorer_choices(extra=[NONE_CHOICE])
        default = rt.default_restorer()
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": rt.tooltip("image")}),
                "restorer": (restorers, {
                    "default": default,
                    "tooltip": "Weights in models/facerestore_models (shared with facerestore_cf / ReActor). "
                               "Listed files that are not there yet download on first use. "
                               "none = crop and paste back only."}),
                "quality": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                      "tooltip": rt.tooltip("quality")}),
                "fidelity": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                       "tooltip": rt.tooltip("fidelity")}),
                "refine_steps": ("INT", {"default": 0, "min": 0, "max": 200,
                                         "tooltip": "Identity-guided latent refinement steps (CLR-Face); "
                                                    "0 = off. Needs a codebook restorer (CodeFormer/IQPFR)."}),
                "identity_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.05,
                                                "tooltip": "Strength of the identity guidance during refine "
                                                           "(needs ArcFace weights in models/facedetection)."}),
                "detector": (DETECTOR_CHOICES, {
                    "default": "auto",
                    "tooltip": "auto = RetinaFace when its weights are present, else the embedded MTCNN."}),
                "crop_size": ([512, 256, 1024], {"default": 512, "tooltip": "Aligned face size in pixels."}),
                "visibility": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                         "tooltip": "0 = original face, 1 = fully restored face."}),
                "color_correction": (["lab", "lowfreq", "none"], {
                    "default": "lab",
                    "tooltip": "Match the restored face's colours to the original: none, lab (mean/std in "
                               "LAB) or lowfreq (keep the original's low frequencies)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF, "tooltip": rt.tooltip("seed")}),
                "device": (rt.DEVICE_CHOICES, {"default": "auto", "tooltip": rt.tooltip("device")}),
            },
            "optional": {
                "reference": ("IMAGE", {"tooltip": "Optional photo of the same person: identity target of "
                                                   "the refine step."}),
            },
        }

    RETURN_TYPES = ("IMAGE", "MASK", "STRING")
    RETURN_NAMES = ("image", "mask", "report")
    OUTPUT_TOOLTIPS = ("The images with every restored face pasted back.",
                       "Where faces were pasted (paste weights, 0..1).",
                       "Faces found, steps run, warnings and timings.")
    FUNCTION = "restore"
    CATEGORY = rt.CATEGORY
    DESCRIPTION = ("One box for the whole chain: detect and align faces, restore them (codebook lookup with "
                   "the quality slider, optional identity refine), and paste them back with a soft mask and "
                   "colour correction. Shows a before/after compare widget after a run.")

    def restore(self, image, restorer=NONE_CHOICE, quality=1.0, fidelity=0.5, refine_steps=0,
                identity_strength=1.0, detector="auto", crop_size=512, visibility=1.0, color_correction="lab",
                seed=0, device="auto", reference=None):
        import torch

        from ..core.crop import CropOptions
        from ..core.pipeline import RestoreOptions, build_steps, restore_images

        rt.register_model_folders()
        dev = rt.get_device(device)
        restorer_arg = NONE_CHOICE
        if restorer and restorer.lower() != NONE_CHOICE:
            restorer_arg = str(rt.weights_path(restorer, "facerestore_models"))
        options = RestoreOptions(
            restorer=restorer_arg, quality=float(quality), fidelity=float(fidelity), refine_steps=int(refine_steps),
            identity_strength=float(identity_strength), reference=reference, device=str(dev), seed=int(seed),
            crop=CropOptions(crop_size=int(crop_size)), detector=detector, visibility=float(visibility),
            color_correction=color_correction)
        if reference is None:  # steps hold loaded models: reuse them between runs
            key = dataclasses.replace(options, progress=None)
            steps = rt.cached_model(restorer_arg if restorer_arg != NONE_CHOICE else None, dev,
                                    lambda: build_steps(options), "restore_steps", repr(key))
        else:
            steps = build_steps(options)

        batch = int(image.shape[0])
        progress = rt.Progress(batch * (2 + len(steps)))

        def run(start: int, stop: int):
            base = start * (2 + len(steps))

            def report(stage, done, total):
                progress.absolute(base + done * (stop - start))
            rt.check_interrupted()
            # identity guidance needs gradients; ComfyUI runs nodes under inference mode
            with rt.autograd() if options.refine_steps > 0 else contextlib.nullcontext():
                return restore_images(image[start:stop], options,
                                      steps=[(n, _interruptible(s)) for n, s in steps], progress=report)

        results = rt.map_batches(run, batch, batch)
        rt.soft_empty_cache()
        out = torch.cat([r.images for r in results]).float().clamp(0, 1)
        masks = torch.cat([r.masks for r in results]).float()
        report = _report(results, restorer, options)
        ui = rt.compare_ui(image, out)
        faces = [f for r in results for f in r.face_crops.faces]
        if any(f.quality for f in faces):
            ui.update(rt.quality_ui(_concat_crops([r.original_crops for r in results]),
                                    _concat_crops([r.face_crops for r in results])))
        return rt.node_output((out, masks, report), ui)


def _interruptible(step):
    """Give core steps ComfyUI's interrupt check and a per-step progress hook via ctx.state."""
    def wrapped(face_crops, ctx):
        ctx.state["should_stop"] = rt.should_stop
        rt.check_interrupted()
        return step(face_crops, ctx)
    return wrapped


def _concat_crops(parts):
    import torch
    parts = [p for p in parts if not p.is_empty]
    if not parts:
        return None
    return dataclasses.replace(parts[0], crops=torch.cat([p.crops for p in parts]),
                               faces=tuple(f for p in parts for f in p.faces), parsing_masks=None)


def _report(results, restorer, options) -> str:
    counts = [c for r in results for c in r.faces_per_image]
    lines = [f"faces per image: {counts}", f"restorer: {restorer}"]
    if options.refine_steps:
        lines.append(f"refine: {options.refine_steps} steps, identity strength {options.identity_strength:g}")
    timings: dict = {}
    for r in results:
        for k, v in r.timings.items():
            timings[k] = timings.get(k, 0.0) + float(v)
    if timings:
        lines.append("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
    for w in dict.fromkeys(w for r in results for w in r.warnings):
        lines.append(f"warning: {w}")
    return "\n".join(lines)


NODES = {
    "FaceRefineRestore": (FaceRefineRestore, "FaceRefine Restore (all-in-one)"),
}
