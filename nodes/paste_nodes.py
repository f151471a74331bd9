"""ComfyUI: Paste Back (IMAGE + FACE_CROPS -> IMAGE + MASK)."""
from __future__ import annotations

from . import runtime


class FaceRefinePasteBack:
    """Blend the (restored) faces back into the images with a soft face-shaped mask."""

    CATEGORY = runtime.CATEGORY_STEPS
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    FUNCTION = "paste"
    DESCRIPTION = ("Inverse-warps each face into its image. The image may have been upscaled since cropping. "
                   "Pixels outside the mask are unchanged.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The images the faces were cropped from (or an upscaled copy)."}),
            "face_crops": ("FACE_CROPS", {"tooltip": runtime.tooltip("face_crops")}),
            "mask": (["auto", "landmarks", "parsenet", "bisenet", "box"], {"default": "auto", "tooltip":
                     "auto = face parsing when parsing_parsenet.pth is in models/facedetection, else a face "
                     "outline from the landmarks."}),
            "erode": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 128.0, "step": 1.0,
                                "tooltip": "Shrink the mask (pixels at 512 crop scale)."}),
            "feather": ("FLOAT", {"default": 16.0, "min": 0.0, "max": 128.0, "step": 1.0,
                                  "tooltip": "Soft edge width (pixels at 512 crop scale)."}),
            "protect_hair": ("BOOLEAN", {"default": False, "tooltip": "Keep the original hair and hairline."}),
            "visibility": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                     "tooltip": "0 = original face, 1 = restored face."}),
            "color_correction": (["lab", "lowfreq", "none"], {"default": "lab", "tooltip":
                                 "lab: match colour mean/std of the original face; lowfreq: keep the original's "
                                 "low frequencies (colour, shading) and the restored details."}),
        }}

    def paste(self, image, face_crops, mask="auto", erode=8.0, feather=16.0, protect_hair=False, visibility=1.0,
              color_correction="lab"):
        from ..core.paste import PasteOptions, paste_back
        options = PasteOptions(mask=mask, erode=float(erode), feather=float(feather), protect_hair=bool(protect_hair),
                               visibility=float(visibility), color_correction=color_correction,
                               device=str(runtime.get_device("auto")))
        out, masks = paste_back(image, face_crops, options)
        return runtime.node_output((out, masks), runtime.compare_ui(image, out))  # before/after widget


NODES = {"FaceRefinePasteBack": (FaceRefinePasteBack, "FaceRefine Paste Back")}
