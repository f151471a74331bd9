"""ComfyUI: Paste Back (IMAGE + FACE_CROPS -> IMAGE + MASK)."""
from __future__ import annotations

from ..core import controls
from . import conventions as nc


class FaceRefinePasteBack:
    """Blend the (restored) faces back into the images with a soft face-shaped mask."""

    CATEGORY = nc.CATEGORY_STEPS
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    FUNCTION = "paste"
    DESCRIPTION = ("Inverse-warps each face into its image. The image may have been upscaled since cropping. "
                   "Pixels outside the mask are unchanged.")

    @classmethod
    def INPUT_TYPES(cls):
        ci = controls.comfy_input  # default, range/choices and help come from core/controls.py
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The images the faces were cropped from (or an upscaled copy)."}),
            "face_crops": ("FACE_CROPS", {"tooltip": nc.tooltip("face_crops")}),
            "mask": ci("mask", tooltip="auto = face parsing when parsing_parsenet.pth is in models/facedetection, "
                                      "else a face outline from the landmarks."),
            "erode": ci("erode"),
            "feather": ci("feather"),
            "protect_hair": ci("protect_hair"),
            "visibility": ci("visibility"),
            "color_correction": ci("color_correction"),
        }}

    def paste(self, image, face_crops, mask="auto", erode=8.0, feather=16.0, protect_hair=False, visibility=1.0,
              color_correction="lab"):
        from ..core.paste.options import PasteOptions
        from ..core.paste.step import paste_back
        options = PasteOptions(mask=mask, erode=float(erode), feather=float(feather), protect_hair=bool(protect_hair),
                               visibility=float(visibility), color_correction=color_correction,
                               device=str(nc.get_device("auto")))
        out, masks = paste_back(image, face_crops, options)
        return nc.node_output((out, masks), nc.compare_ui(image, out))  # before/after widget


NODES = {"FaceRefinePasteBack": (FaceRefinePasteBack, "FaceRefine Paste Back")}
