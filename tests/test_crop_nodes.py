"""ComfyUI adapters of crop and paste, called directly (no ComfyUI needed)."""
import pytest
import torch

from crop_fixtures import place_faces, similarity
from facerefine.core.crop.step import align_faces
from facerefine.errors import FaceRefineError
from facerefine.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from facerefine.nodes.crop_nodes import FaceRefineCropsToImage, FaceRefineFaceCrop, FaceRefineImageToCrops
from facerefine.nodes.paste_nodes import FaceRefinePasteBack


def _result(value):
    """A node's outputs, with or without a ComfyUI ``{"ui", "result"}`` wrapper."""
    return value["result"] if isinstance(value, dict) else value


def test_nodes_are_registered():
    for name in ("FaceRefineFaceCrop", "FaceRefineCropsToImage", "FaceRefineImageToCrops", "FaceRefinePasteBack"):
        assert name in NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS[name].startswith("FaceRefine")
        cls = NODE_CLASS_MAPPINGS[name]
        assert cls.CATEGORY.startswith("FaceRefine") and hasattr(cls, cls.FUNCTION)
        assert "required" in cls.INPUT_TYPES()


def test_face_crop_without_faces_gives_empty_crops_and_a_black_image():
    image = torch.full((1, 80, 96, 3), 0.5)
    face_crops, crops = _result(FaceRefineFaceCrop().crop(image, crop_size=256))
    assert face_crops.is_empty and crops.shape == (1, 256, 256, 3) and crops.max() == 0
    out, mask = _result(FaceRefinePasteBack().paste(image, face_crops))
    assert torch.equal(out, image) and mask.shape == (1, 80, 96) and mask.max() == 0


@pytest.fixture
def scene():
    image, det, _ = place_faces(300, 320, [similarity(0.35, 5, 40, 30), similarity(0.25, -5, 190, 120)])
    return image, align_faces(image, [det])


def test_converters_round_trip_and_edited_crops_paste_back(scene):
    image, face_crops = scene
    (as_image,) = _result(FaceRefineCropsToImage().convert(face_crops))
    assert as_image.shape == (2, 512, 512, 3)
    edited = as_image.clone()
    edited[1] = torch.tensor([0.0, 0.0, 1.0])  # paint the second face blue
    (back,) = _result(FaceRefineImageToCrops().convert(edited, face_crops))
    assert back.faces == face_crops.faces and back.history[-1] == "image"
    out, mask = _result(FaceRefinePasteBack().paste(image, back, color_correction="none"))
    assert out.shape == image.shape and mask.shape == image.shape[:3]
    blue = (out[0, ..., 2] > 0.99) & (out[0, ..., 0] < 0.01)
    assert blue[120:260, 190:320].sum() > 500 and blue[:, :150].sum() == 0


def test_image_to_crops_count_mismatch_is_a_clear_error(scene):
    _, face_crops = scene
    with pytest.raises(FaceRefineError, match="one image per face"):
        FaceRefineImageToCrops().convert(torch.rand(3, 512, 512, 3), face_crops)


def test_converters_accept_other_sizes(scene):
    _, face_crops = scene
    (back,) = _result(FaceRefineImageToCrops().convert(torch.rand(2, 256, 256, 3), face_crops))
    assert back.crops.shape == (2, 3, 512, 512)
