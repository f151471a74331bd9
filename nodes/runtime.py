"""What every FaceRefine node module shares: node conventions (categories, tooltips, device choices) and,
re-exported here so nodes write ``rt.name``, the three helpers behind them:

- nodes/host.py: the ComfyUI host shim (host modules, devices, interruption, progress, OOM back-off,
  model cache, autograd inside a node);
- nodes/weights.py: model folders and weights dropdowns (resolved by models.locate);
- nodes/ui_output.py: what the nodes show (quality scores, before/after previews, node output).
``comfy``/``folder_paths`` are imported lazily; outside ComfyUI every helper falls back to plain torch.
"""
from __future__ import annotations

from typing import Optional

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

TOOLTIPS = {
    "image": "Images to process (ComfyUI IMAGE, batch allowed).",
    "face_crops": "Aligned faces from FaceRefine Face Crop (FACE_CROPS).",
    "face_latent": "Codebook latent from FaceRefine Codebook Lookup (FACE_LATENT).",
    "restorer": "A restorer from FaceRefine Load Restorer (CodeFormer, GFPGAN, RestoreFormer++ or ours).",
    "quality": "Target quality, 0..1: higher steers the codebook lookup toward higher predicted quality.",
    "fidelity": "0 = most restoration, 1 = closest to the input face (CodeFormer's w).",
    "device": "auto = ComfyUI's device (GPU when present); cpu forces the CPU.",
    "face_batch": "Faces processed at once. Halved automatically on out-of-memory.",
    "seed": "Random seed of the diffusion refinement.",
}


def tooltip(name: str, extra: Optional[str] = None) -> str:
    return extra or TOOLTIPS.get(name, "")
