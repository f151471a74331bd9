"""Face-parsing masks: facexlib BiSeNet/ParseNet wiring with random weights, label -> mask rules."""
import pytest
import torch

from facerefine.models import cache as model_cache
from facerefine.core.paste.options import PasteOptions

from facerefine.core.paste.step import face_masks, paste_back
from facerefine.core.paste import masks as masks_mod
from facerefine.core.paste.step import resolve_mask_kind
from facerefine.errors import WeightsNotFoundError
from facerefine.models.locate import home_dir

from crop_fixtures import place_faces, similarity
from facerefine.core.crop.step import align_faces


@pytest.fixture(autouse=True)
def _fresh():
    model_cache.clear("parser")
    yield
    model_cache.clear("parser")


def test_labels_to_mask_excludes_hair_and_background():
    labels = torch.zeros(1, 64, 64, dtype=torch.long)
    labels[:, 20:50, 16:48] = 1            # skin
    labels[:, 30:34, 22:28] = 4            # an eye: still face
    labels[:, 8:20, 10:54] = masks_mod.HAIR
    labels[:, 50:, 20:44] = masks_mod.NECK
    m = masks_mod.parsing_masks(labels)
    assert m[0, 35, 30] == 1 and m[0, 32, 24] == 1
    assert m[0, 10, 30] == 0 and m[0, 55, 30] == 0 and m[0, 2, 2] == 0
    protected = masks_mod.parsing_masks(labels, protect_hair=True)
    assert protected[0, 21, 30] == 0 and protected[0, 40, 30] == 1  # a margin below the hair is kept


def test_missing_parser_weights_fall_back_to_landmarks_offline():
    assert resolve_mask_kind("auto") == "landmarks"
    with pytest.raises(WeightsNotFoundError, match="parsing_parsenet.pth"):
        masks_mod.load_parser("parsenet")


def test_random_bisenet_drives_the_paste_mask():
    model = masks_mod.build_parser("bisenet")
    target = home_dir() / "facedetection"
    target.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), target / "parsing_bisenet.pth")
    assert resolve_mask_kind("auto") == "bisenet"
    image, det, _ = place_faces(200, 200, [similarity(0.3, 0, 20, 20)])
    crops = align_faces(image, [det])
    m = face_masks(crops, PasteOptions(mask="auto"))
    assert m.shape == (1, 512, 512) and 0 <= float(m.min()) and float(m.max()) <= 1
    out, weights = paste_back(image, crops, PasteOptions(mask="bisenet"))
    assert torch.equal(out[weights[..., None].expand_as(out) == 0], image[weights[..., None].expand_as(image) == 0])
