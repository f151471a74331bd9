"""ComfyUI node of the lookup step: Codebook Lookup (quality slider + fidelity)."""
from __future__ import annotations

from ..core import controls
from . import runtime as rt

MODE_CHOICES = list(controls.MODES)


class FaceRefineCodebookLookup:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "face_crops": ("FACE_CROPS", {"tooltip": rt.tooltip("face_crops")}),
                "restorer": ("FACEREFINE_RESTORER", {"tooltip": rt.tooltip("restorer")}),
                "quality": controls.comfy_input("quality", tooltip=(
                    "IQPFR quality slider. trained: the NR-IQA score the lookup aims for. training-free: how "
                    "strongly codes are re-chosen (among each token's top-k) to raise the quality critic; "
                    "0 = exactly the base output. No effect on GFPGAN / RestoreFormer++.")),
                "fidelity": controls.comfy_input("fidelity", tooltip=rt.tooltip("fidelity")),
                "mode": controls.comfy_input("lookup_mode", tooltip=(
                    "auto = trained if the restorer has quality-conditioning weights, else training-free "
                    "(critic-steered), else off. off = the plain base model.")),
                "top_k": ("INT", {"default": 8, "min": 2, "max": 64,
                                  "tooltip": "training-free: candidate codes per token (top-k of the lookup logits)."}),
                "device": (rt.DEVICE_CHOICES, {"default": "auto", "tooltip": rt.tooltip("device")}),
                "face_batch": ("INT", {"default": 8, "min": 1, "max": 64, "tooltip": rt.tooltip("face_batch")}),
            },
            "optional": {
                "iqa_model": ("FACEREFINE_IQA", {"tooltip": "Quality critic for training-free steering "
                                                            "(default: face-iqa)."}),
            },
        }

    RETURN_TYPES = ("FACE_CROPS", "FACE_LATENT")
    RETURN_NAMES = ("face_crops", "face_latent")
    FUNCTION = "lookup"
    CATEGORY = rt.CATEGORY_STEPS
    DESCRIPTION = (
        "Codebook lookup restoration with the IQPFR quality slider and CodeFormer's fidelity. The quality slider "
        "acts only on codebook restorers (CodeFormer, IQPFR): with trained quality-conditioning weights it sets "
        "the target quality; without them (training-free) it re-chooses codes among each token's top-k to raise "
        "an NR-IQA critic. GFPGAN and RestoreFormer++ have no lookup Transformer: for them quality and fidelity "
        "do nothing and the node returns their base output.")

    def lookup(self, face_crops, restorer, quality=1.0, fidelity=0.5, mode="auto", top_k=8, device="auto",
               face_batch=8, iqa_model=None):
        import torch

        from ..core.lookup import concat_latents, lookup, resolve_mode
        if face_crops.is_empty:
            return lookup(face_crops, restorer, quality, fidelity, "off")
        dev = rt.get_device(device)
        progress = rt.Progress(len(face_crops))
        with rt.on_device(restorer, dev):
            resolve_mode(restorer, mode, quality, iqa_model)  # user errors before any work

            def run(start, stop):
                return lookup(face_crops.select(list(range(start, stop))), restorer, quality, fidelity, mode,
                              critic=iqa_model, top_k=top_k, batch_size=stop - start)
            parts = rt.map_batches(run, len(face_crops), face_batch, progress)
        crops = face_crops.with_crops(torch.cat([p[0].crops for p in parts]), parts[0][0].history[-1])
        crops, ui = rt.score_before_after(face_crops, crops, iqa_model)  # per-face quality before -> after
        return rt.node_output((crops, concat_latents([p[1] for p in parts])), ui)


NODES = {"FaceRefineCodebookLookup": (FaceRefineCodebookLookup, "FaceRefine Codebook Lookup")}
