"""ComfyUI node of the lookup step: Codebook Lookup (quality slider + fidelity)."""
from __future__ import annotations

from ..core import controls
from . import conventions as nc

MODE_CHOICES = list(controls.MODES)


class FaceRefineCodebookLookup:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "face_crops": ("FACE_CROPS", {"tooltip": nc.tooltip("face_crops")}),
                "restorer": ("FACEREFINE_RESTORER", {"tooltip": nc.tooltip("restorer")}),
                "quality": controls.comfy_input("quality", tooltip=(
                    "IQPFR quality slider. trained: the NR-IQA score the lookup aims for. training-free: how "
                    "strongly codes are re-chosen (among each token's top-k) to raise the quality critic; "
                    "0 = exactly the base output. No effect on GFPGAN / RestoreFormer++.")),
                "fidelity": controls.comfy_input("fidelity"),
                "mode": controls.comfy_input("lookup_mode", tooltip=(
                    "auto = trained if the restorer has quality-conditioning weights, else training-free "
                    "(critic-steered), else off. off = the plain base model.")),
                "top_k": ("INT", {"default": 8, "min": 2, "max": 64,
                                  "tooltip": "training-free: candidate codes per token (top-k of the lookup logits)."}),
                "device": (nc.DEVICE_CHOICES, {"default": "auto", "tooltip": nc.tooltip("device")}),
                "face_batch": ("INT", {"default": 8, "min": 1, "max": 64, "tooltip": nc.tooltip("face_batch")}),
            },
            "optional": {
                "iqa_model": ("FACEREFINE_IQA", {"tooltip": "Quality critic for training-free steering "
                                                            "(default: face-iqa)."}),
                "exemplar_detail": controls.comfy_input("exemplar_detail"),
            },
        }

    RETURN_TYPES = ("FACE_CROPS", "FACE_LATENT")
    RETURN_NAMES = ("face_crops", "face_latent")
    FUNCTION = "lookup"
    CATEGORY = nc.CATEGORY_STEPS
    DESCRIPTION = (
        "Codebook lookup restoration with the IQPFR quality slider and CodeFormer's fidelity. The quality slider "
        "acts only on codebook restorers (CodeFormer, IQPFR): with trained quality-conditioning weights it sets "
        "the target quality; without them (training-free) it re-chooses codes among each token's top-k to raise "
        "an NR-IQA critic. GFPGAN and RestoreFormer++ have no lookup Transformer: for them quality and fidelity "
        "do nothing and the node returns their base output.")

    def lookup(self, face_crops, restorer, iqa_model=None, **values):
        return lookup_faces(face_crops, restorer, iqa_model, **values)


def lookup_faces(face_crops, restorer, critic=None, device="auto", face_batch=8, **lookup_args):
    """The node's work: core.lookup.lookup in batches of ``face_batch`` faces on ComfyUI's device (``lookup_args``:
    its quality, fidelity, mode and top_k), then the faces' quality before -> after."""
    from dataclasses import replace

    import torch

    from ..core.lookup.latent import concat_latents
    from ..core.lookup.lookup import lookup, resolve_mode
    from ..core.lookup.options import LookupOptions, SteerOptions
    steer = SteerOptions(top_k=int(lookup_args.pop("top_k", SteerOptions.top_k)))
    options = LookupOptions(**lookup_args, critic=critic, steer=steer)
    if face_crops.is_empty:
        return lookup(face_crops, restorer, replace(options, mode="off"))
    dev = nc.get_device(device)
    progress = nc.Progress(len(face_crops))
    with nc.on_device(restorer, dev):
        # user errors before any work
        resolve_mode(restorer, options.mode, options.quality, critic)

        def run(start, stop):
            faces = face_crops.select(list(range(start, stop)))
            return lookup(faces, restorer, replace(options, batch_size=stop - start))
        parts = nc.map_batches(run, len(face_crops), face_batch, progress)
    crops = face_crops.with_crops(torch.cat([p[0].crops for p in parts]), parts[0][0].history[-1])
    crops, ui = nc.score_before_after(face_crops, crops, critic)  # per-face quality before -> after
    return nc.node_output((crops, concat_latents([p[1] for p in parts])), ui)


NODES = {"FaceRefineCodebookLookup": (FaceRefineCodebookLookup, "FaceRefine Codebook Lookup")}
