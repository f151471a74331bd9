"""FaceRefine Restore (all-in-one): IMAGE + options -> IMAGE + MASK + report, on core.pipeline.restore_images."""
from __future__ import annotations

import contextlib
import dataclasses

from ..core import controls
from . import runtime as rt

NONE_CHOICE = "none"


class FaceRefineRestore:
    @classmethod
    def INPUT_TYPES(cls):
        rt.register_model_folders()
        restorers = rt.restorer_choices(extra=[NONE_CHOICE])
        ci = controls.comfy_input  # default, range/choices and help come from core/controls.py
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": rt.tooltip("image")}),
                "restorer": ci("restorer", choices=restorers, default=rt.default_restorer(),
                               tooltip="Weights in models/facerestore_models (shared with facerestore_cf / ReActor). "
                                       "Listed files that are not there yet download on first use. "
                                       "none = crop and paste back only."),
                "quality": ci("quality"),
                "fidelity": ci("fidelity"),
                "refine_steps": ci("refine_steps"),
                "identity_strength": ci("identity_strength"),
                "detector": ci("detector"),
                "crop_size": ci("crop_size"),
                "visibility": ci("visibility"),
                "color_correction": ci("color_correction"),
                "seed": ci("seed"),
                "device": ci("device", choices=rt.DEVICE_CHOICES),
            },
            "optional": {
                "reference": ("IMAGE", {"tooltip": controls.control("reference").help}),
                "allow_color": ci("allow_color"),
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
                identity_strength=0.5, detector="auto", crop_size=512, visibility=1.0, color_correction="lab",
                seed=0, device="auto", reference=None, allow_color=False):
        import torch

        from ..core.pipeline import RestoreOptions, build_steps, restore_images

        rt.register_model_folders()
        dev = rt.get_device(device)
        restorer_arg = NONE_CHOICE
        if restorer and restorer.lower() != NONE_CHOICE:
            restorer_arg = str(rt.weights_path(restorer, "facerestore_models"))
        options = RestoreOptions.from_values(
            restorer=restorer_arg, quality=quality, fidelity=fidelity, refine_steps=refine_steps,
            identity_strength=identity_strength, reference=reference, device=str(dev), seed=seed,
            detector=detector, crop_size=crop_size, visibility=visibility, color_correction=color_correction,
            allow_color=allow_color)
        if reference is None:  # steps hold loaded models: reuse them between runs
            steps = rt.cached_model(restorer_arg if restorer_arg != NONE_CHOICE else None, dev,
                                    lambda: build_steps(options), "restore_steps", repr(options))
        else:
            steps = build_steps(options)

        batch = int(image.shape[0])
        progress = rt.Progress(batch * (2 + len(steps)))

        def run(start: int, stop: int):
            base = start * (2 + len(steps))

            def report(stage, done, total):
                progress.absolute(base + done * (stop - start))
                rt.check_interrupted()  # ComfyUI's cancel, between steps
            rt.check_interrupted()
            # identity guidance needs gradients; ComfyUI runs nodes under inference mode
            with rt.autograd() if options.refine.wanted else contextlib.nullcontext():
                return restore_images(image[start:stop], options, steps=steps, progress=report,
                                      should_stop=rt.should_stop)

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
    if options.refine.wanted:
        lines.append(f"refine: {options.refine.steps} steps, identity strength {options.refine.identity_strength:g}")
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
