"""FaceRefine Restore (all-in-one): IMAGE + options -> IMAGE + MASK + report, on core.pipeline.restore_images.

The inputs are the table's controls (core/controls.py, front end "node"); ``restore_batch`` does the work.
"""
from __future__ import annotations

import contextlib
import dataclasses

from . import conventions as nc


class FaceRefineRestore:
    @classmethod
    def INPUT_TYPES(cls):
        inputs = nc.control_inputs("node")  # default, range/choices and help come from core/controls.py
        inputs["required"] = {"image": ("IMAGE", {"tooltip": nc.tooltip("image")}), **inputs["required"]}
        return inputs

    RETURN_TYPES = ("IMAGE", "MASK", "STRING")
    RETURN_NAMES = ("image", "mask", "report")
    OUTPUT_TOOLTIPS = ("The images with every restored face pasted back.",
                       "Where faces were pasted (paste weights, 0..1).",
                       "Faces found, steps run, warnings and timings.")
    FUNCTION = "restore"
    CATEGORY = nc.CATEGORY
    DESCRIPTION = ("One box for the whole chain: detect and align faces, restore them (codebook lookup with "
                   "the quality slider, optional identity refine), and paste them back with a soft mask and "
                   "colour correction. Shows a before/after compare widget after a run.")

    def restore(self, image, **values):
        return restore_batch(image, values)


def restore_batch(image, values: dict):
    """The node's work: options from the input values, the steps (kept while the options hold), the pipeline
    over the batch under ComfyUI's progress bar and cancel; (image, mask, report) + the compare widget."""
    from ..core.pipeline import RestoreOptions

    options = RestoreOptions.from_values(**nc.pipeline_values(values))
    results = _run(image, options, _steps(options))
    nc.soft_empty_cache()
    return _output(image, results, values.get("restorer"), options)


def _steps(options):
    """The steps hold loaded models: reused between runs with the same options (not with a reference photo)."""
    from ..core.pipeline import build_steps
    if options.refine.reference is not None:
        return build_steps(options)
    restorer = options.lookup.restorer if options.wants_restorer else None
    return nc.cached_model(restorer, options.device, lambda: build_steps(options), "restore_steps", repr(options))


def _run(image, options, steps) -> list:
    from ..core.pipeline import restore_images
    batch = int(image.shape[0])
    progress = nc.Progress(batch * (2 + len(steps)))

    def run(start: int, stop: int):
        base = start * (2 + len(steps))

        def report(stage, done, total):
            progress.absolute(base + done * (stop - start))
            nc.check_interrupted()  # ComfyUI's cancel, between steps
        nc.check_interrupted()
        # identity guidance needs gradients; ComfyUI runs nodes under inference mode
        with nc.autograd() if options.refine.wanted else contextlib.nullcontext():
            return restore_images(image[start:stop], options, steps=steps, progress=report,
                                  should_stop=nc.should_stop)
    return nc.map_batches(run, batch, batch)


def _output(image, results, restorer, options):
    import torch
    out = torch.cat([r.images for r in results]).float().clamp(0, 1)
    masks = torch.cat([r.masks for r in results]).float()
    ui = nc.compare_ui(image, out)
    if any(f.quality for r in results for f in r.face_crops.faces):
        ui.update(nc.quality_ui(_concat_crops([r.original_crops for r in results]),
                                _concat_crops([r.face_crops for r in results])))
    return nc.node_output((out, masks, _report(results, restorer, options)), ui)


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
