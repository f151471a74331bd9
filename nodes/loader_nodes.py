"""ComfyUI loader node for restorers (files in models/facerestore_models, shared with facerestore_cf/ReActor)."""
from __future__ import annotations

from ..core.controls import is_none
from . import conventions as nc


def restorer_choices() -> list[str]:
    return nc.restorer_choices()  # facerestore_models files + embedded default + known downloads


class FaceRefineRestorerLoader:
    @classmethod
    def INPUT_TYPES(cls):
        conds = [nc.NO_FILE] + [n for n in nc.list_weights("facerefine") if "condition" in n.lower()]
        return {
            "required": {
                "restorer_name": (restorer_choices(), {
                    "default": nc.default_restorer(),
                    "tooltip": "Weights in models/facerestore_models: CodeFormer, GFPGAN v1.3/v1.4, RestoreFormer++ "
                               "or a FaceRefine IQPFR model. The architecture is detected from the file."}),
            },
            "optional": {
                "quality_condition": (conds, {
                    "default": nc.NO_FILE,
                    "tooltip": "IQPFR quality-conditioning weights (models/facerefine) for a CodeFormer checkpoint; "
                               "enables the 'trained' quality mode. (none) = plain CodeFormer."}),
            },
        }

    RETURN_TYPES = ("FACEREFINE_RESTORER",)
    RETURN_NAMES = ("restorer",)
    FUNCTION = "load"
    CATEGORY = nc.CATEGORY_LOADERS
    DESCRIPTION = ("Loads a face restorer through spandrel (+ spandrel_extra_arches for CodeFormer) or our IQPFR "
                   "model. Only CodeFormer and IQPFR have a codebook lookup, so only they react to the lookup's "
                   "controls (Codebook Lookup); GFPGAN and RestoreFormer++ always give their base output.")

    def load(self, restorer_name, quality_condition=nc.NO_FILE):
        from ..models.restorers import load_restorer
        path = nc.weights_path(restorer_name, "facerestore_models")
        cond = None
        if not is_none(quality_condition):
            cond = str(nc.weights_path(quality_condition, "facerefine"))
        restorer = nc.cached_model(path, "cpu", lambda: load_restorer(path, "cpu", quality_condition=cond),
                                   "restorer", cond)
        return (restorer,)


NODES = {"FaceRefineRestorerLoader": (FaceRefineRestorerLoader, "FaceRefine Load Restorer")}
