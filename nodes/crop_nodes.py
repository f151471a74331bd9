"""ComfyUI: Face Crop (IMAGE -> FACE_CROPS + crops) and FACE_CROPS <-> IMAGE converters."""
from __future__ import annotations

import warnings

from ..core import controls
from . import conventions as nc

DETECTOR_CHOICES = list(controls.DETECTORS)


class FaceRefineFaceCrop:
    """Detect faces (5 landmarks) and align them to the FFHQ template."""

    CATEGORY = nc.CATEGORY_STEPS
    RETURN_TYPES = ("FACE_CROPS", "IMAGE")
    RETURN_NAMES = ("face_crops", "crops")
    FUNCTION = "crop"
    DESCRIPTION = "Finds faces and aligns each to a square crop. No face: empty FACE_CROPS and a black crop."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": nc.tooltip("image")}),
            "detector": controls.comfy_input("detector", tooltip="auto = RetinaFace when its weights are in "
                                             "models/facedetection, else the embedded MTCNN (works offline)."),
            "crop_size": controls.comfy_input("crop_size"),
            "sort": (["largest", "left_to_right", "confidence"], {"default": "largest", "tooltip":
                     "Face order (and which faces max_faces / face_index keep)."}),
            "face_index": ("STRING", {"default": "", "tooltip":
                           "Pick faces after sorting: '' = all, '0' = first, '0,2' = first and third."}),
            "max_faces": ("INT", {"default": 0, "min": 0, "max": 256, "tooltip": "0 = all faces."}),
            "only_center_face": ("BOOLEAN", {"default": False,
                                             "tooltip": "Keep only the face nearest the image centre."}),
            "min_face_size": ("INT", {"default": 0, "min": 0, "max": 8192,
                                      "tooltip": "Ignore faces smaller than this many pixels."}),
            "det_threshold": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                        "tooltip": "0 = the detector's default (MTCNN 0.9, RetinaFace 0.8)."}),
        }}

    def crop(self, image, **values):
        face_crops = crop_image(image, values)
        return face_crops, crops_to_image(face_crops)


def crop_image(image, values: dict):
    """The node's work: its inputs as CropOptions (det_threshold 0 = the detector's default, face_index '' =
    every face), on ComfyUI's device."""
    from ..core.crop.options import CropOptions
    from ..core.crop.step import crop_faces
    kinds = {"crop_size": int, "max_faces": int, "only_center_face": bool, "min_face_size": float}
    values = {k: kinds.get(k, lambda v: v)(v) for k, v in values.items()}
    threshold = float(values.pop("det_threshold", 0.0))
    face_index = values.pop("face_index", "") or None
    options = CropOptions(**values, det_threshold=threshold if threshold > 0 else None, face_index=face_index,
                          device=str(nc.get_device("auto")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # logged by crop_faces
        return crop_faces(image, options)


def crops_to_image(face_crops):
    """FACE_CROPS -> IMAGE [N,S,S,3]; an empty set gives one black crop (ComfyUI needs a picture)."""
    import torch
    if face_crops.is_empty:
        return torch.zeros(1, face_crops.crop_size, face_crops.crop_size, 3)
    return face_crops.crops.detach().float().cpu().permute(0, 2, 3, 1).contiguous()


class FaceRefineCropsToImage:
    """FACE_CROPS -> IMAGE batch, to edit the faces with any image node."""

    CATEGORY = nc.CATEGORY_UTILS
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("crops",)
    FUNCTION = "convert"
    DESCRIPTION = ("FACE_CROPS -> IMAGE batch (one aligned face per image), to edit the faces with any image "
                   "node; bring them back with Image to Face Crops.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"face_crops": ("FACE_CROPS", {"tooltip": nc.tooltip("face_crops")})}}

    def convert(self, face_crops):
        return (crops_to_image(face_crops),)


class FaceRefineImageToCrops:
    """IMAGE batch (edited crops) + the FACE_CROPS they came from -> FACE_CROPS with the new crops."""

    CATEGORY = nc.CATEGORY_UTILS
    RETURN_TYPES = ("FACE_CROPS",)
    RETURN_NAMES = ("face_crops",)
    FUNCTION = "convert"
    DESCRIPTION = ("Puts edited face images back into the FACE_CROPS they came from (same order and count); "
                   "the geometry is kept, so Paste Back can place them.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "crops": ("IMAGE", {"tooltip": "One image per face, in the order of the FACE_CROPS."}),
            "face_crops": ("FACE_CROPS", {"tooltip": "Where the faces came from (geometry is kept)."}),
        }}

    def convert(self, crops, face_crops):
        from ..core.image_io import sanitize_images
        from ..errors import FaceRefineError
        if face_crops.is_empty:
            return (face_crops,)
        images = sanitize_images(crops, name="crops")
        if images.shape[0] != len(face_crops):
            raise FaceRefineError(f"got {images.shape[0]} crop images for {len(face_crops)} faces; "
                                  f"keep one image per face, in order")
        return (face_crops.with_crops(images.permute(0, 3, 1, 2), "image"),)


NODES = {
    "FaceRefineFaceCrop": (FaceRefineFaceCrop, "FaceRefine Face Crop"),
    "FaceRefineCropsToImage": (FaceRefineCropsToImage, "FaceRefine Face Crops to Image"),
    "FaceRefineImageToCrops": (FaceRefineImageToCrops, "FaceRefine Image to Face Crops"),
}
