"""What every FaceRefine node module shares: node conventions (categories, tooltips, device choices, the
table's controls as node inputs) and, re-exported here so nodes write ``nc.name``, the three helpers behind them:

- nodes/host.py: the ComfyUI host shim (host modules, devices, interruption, progress, OOM back-off,
  model cache, autograd inside a node);
- nodes/weights.py: model folders and weights dropdowns (resolved by models.locate);
- nodes/ui_output.py: what the nodes show (quality scores, before/after previews, node output).
``comfy``/``folder_paths`` are imported lazily; outside ComfyUI every helper falls back to plain torch.
"""
from __future__ import annotations

from typing import Any, Optional

from ..core import controls
from .host import (Interrupted, ModelCache, MODEL_CACHE, Progress, autograd, cached_model,  # noqa: F401
                   check_interrupted, comfy_utils, folder_paths, get_device, in_comfy, is_oom, map_batches,
                   model_management, offload_device, on_device, request_interrupt, should_stop, soft_empty_cache)
from .ui_output import compare_ui, node_output, quality_ui, save_previews, score_before_after  # noqa: F401
from .weights import (MODEL_FOLDERS, WEIGHT_EXTENSIONS, default_restorer, embedded_restorers,  # noqa: F401
                      list_weights, list_weights_for, register_model_folders, restorer_choices, weights_choices,
                      weights_path)

# --- shared node conventions (category, tooltips) ---
CATEGORY = "FaceRefine"
CATEGORY_STEPS = "FaceRefine/steps"
CATEGORY_LOADERS = "FaceRefine/loaders"
CATEGORY_UTILS = "FaceRefine/utils"

DEVICE_CHOICES = ["auto", "cpu"]  # auto = models.device.resolve_device: ComfyUI's device (GPU when present)
NO_RESTORER = "none"              # the restorer dropdowns' "crop and paste back only"
NO_FILE = "(none)"                # the loaders' "no file" entry

TOOLTIPS = {
    "image": "Images to process (ComfyUI IMAGE, batch allowed).",
    "face_crops": "Aligned faces from FaceRefine Face Crop (FACE_CROPS).",
    "face_latent": "Codebook latent from FaceRefine Codebook Lookup (FACE_LATENT).",
    "restorer": "A restorer from FaceRefine Load Restorer (CodeFormer, GFPGAN, RestoreFormer++ or ours).",
    "device": "auto = ComfyUI's device (GPU when present); cpu forces the CPU.",
    "face_batch": "Faces processed at once. Halved automatically on out-of-memory.",
}
RESTORER_FILES = ("Weights in models/facerestore_models (shared with facerestore_cf / ReActor). Listed files that "
                  "are not there yet download on first use. none = crop and paste back only.")


def tooltip(name: str, extra: Optional[str] = None) -> str:
    return extra or TOOLTIPS.get(name, "")


def _host_input(c: controls.Control, tooltips: dict) -> tuple:
    """The control's input; the restorer and device lists are ComfyUI's (files on disk, its devices)."""
    if c.kind == "weights" and c.option == "lookup.restorer":
        return controls.comfy_input(c.name, choices=restorer_choices(extra=[NO_RESTORER]),
                                    default=default_restorer(), tooltip=tooltips.get(c.name, RESTORER_FILES))
    if c.option == "pipeline.device":
        return controls.comfy_input(c.name, choices=DEVICE_CHOICES, tooltip=tooltips.get(c.name, TOOLTIPS["device"]))
    return controls.comfy_input(c.name, tooltip=tooltips.get(c.name, ""))


def control_inputs(front: str, tooltips: Optional[dict] = None) -> dict[str, dict[str, tuple]]:
    """INPUT_TYPES of the table's controls a node offers (core/controls.py ``shown``), in table order: the
    required ones, then the optional ones (every control added after the first node version, so workflows
    saved before keep loading). ``tooltips``: a node's own wording for some inputs."""
    register_model_folders()
    inputs: dict[str, dict[str, tuple]] = {"required": {}, "optional": {}}
    for c in controls.shown_in(front):
        inputs["required" if c.required else "optional"][c.name] = _host_input(c, tooltips or {})
    return inputs


def pipeline_values(values: dict[str, Any]) -> dict[str, Any]:
    """Node input values -> ``RestoreOptions.from_values`` values: the restorer as its file in ComfyUI's
    folders (or none), the device as ComfyUI's."""
    register_model_folders()
    values = dict(values)
    for c in controls.CONTROLS:
        if c.option == "pipeline.device":
            values[c.name] = str(get_device(values.get(c.name) or c.default))
        elif c.option == "lookup.restorer":
            chosen = values.get(c.name)
            values[c.name] = NO_RESTORER if controls.is_none(chosen) else str(weights_path(chosen,
                                                                                           "facerestore_models"))
    return values
