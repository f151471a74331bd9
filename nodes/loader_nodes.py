"""ComfyUI loader node for restorers (files in models/facerestore_models, shared with facerestore_cf/ReActor)."""
from __future__ import annotations

from . import runtime as rt

NONE_CHOICE = "(none)"


def restorer_choices() -> list[str]:
    return rt.restorer_choices()  # facerestore_models files + embedded default + known downloads


class FaceRefineRestorerLoader:
    @classmethod
    def INPUT_TYPES(cls):
        conds = [NONE_CHOICE] + [n for n in rt.list_weights("facerefine") if "condition" in n.lower()]
        return {
            "required": {
                "restorer_name": (restorer_choices(), {
                    "default": rt.default_restorer(),
                    "tooltip": "Weights in models/facerestore_models: CodeFormer, GFPGAN v1.3/v1.4, RestoreFormer++ "
                               "or a FaceRefine IQPFR model. The architecture is detected from the file."}),
            },
            "optional": {
                "quality_condition": (conds, {
                    "default": NONE_CHOICE,
                    "tooltip": "IQPFR quality-conditioning weights (models/facerefine) for a CodeFormer checkpoint; "
                               "enables the 'trained' quality mode. (none) = plain CodeFormer."}),
            },
        }

    RETURN_TYPES = ("FACEREFINE_RESTORER",)
    RETURN_NAMES = ("restorer",)
    FUNCTION = "load"
    CATEGORY = rt.CATEGORY_LOADERS
    DESCRIPTION = ("Loads a face restorer through spandrel (+ spandrel_extra_arches for CodeFormer) or our IQPFR "
                   "model. Only CodeFormer and IQPFR have a codebook lookup, so only they react to the quality "
                   "slider and fidelity; GFPGAN and RestoreFormer++ always give their base output.")

    def load(self, restorer_name, quality_condition=NONE_CHOICE):
        from ..core.lookup import load_restorer
        path = rt.weights_path(restorer_name, "facerestore_models")
        cond = None
        if quality_condition and quality_condition != NONE_CHOICE:
            cond = str(rt.weights_path(quality_condition, "facerefine"))
        restorer = rt.cached_model(path, "cpu", lambda: load_restorer(path, "cpu", quality_condition=cond),
                                   "restorer", cond)
        return (restorer,)


NODES = {"FaceRefineRestorerLoader": (FaceRefineRestorerLoader, "FaceRefine Load Restorer")}
