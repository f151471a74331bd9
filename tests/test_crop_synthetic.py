"""Crop geometry on synthetic faces with a known affine: needs no downloaded weights."""
import numpy as np
import pytest
import torch

from crop_fixtures import place_faces, psnr, similarity
from facerefine.core.crop.options import CropOptions
from facerefine.core.types import RawDetections
from facerefine.core.crop.step import align_faces, crop_faces, detect_faces
from facerefine.core.crop.align import template
from facerefine.core.crop.step import _select
from facerefine.core.crop.align import estimate_affine
from facerefine.core.crop.warp import invert_affine
from facerefine.errors import FaceRefineError


def test_estimate_affine_recovers_known_similarity():
    m = similarity(0.37, 23.0, 140.0, 90.0)  # crop -> image
    pts = np.hstack([template(512), np.ones((5, 1))]) @ m.T
    affine = estimate_affine(pts, 512)
    assert np.allclose(affine, invert_affine(m), atol=1e-6)
    assert np.allclose(estimate_affine(pts, 256), invert_affine(m) * [[0.5], [0.5]], atol=1e-6)


@pytest.mark.parametrize("crop_size", [256, 512, 1024])
def test_align_crop_matches_the_known_face(crop_size):
    m = similarity(0.8, -12.0, 60.0, 70.0)
    image, det, faces = place_faces(600, 560, [m])
    crops = align_faces(image, [det], CropOptions(crop_size=crop_size))
    assert len(crops) == 1 and crops.crops.shape == (1, 3, crop_size, crop_size)
    face = crops.faces[0]
    assert np.allclose(face.affine, invert_affine(m) * crop_size / 512, atol=1e-5)
    assert np.allclose(face.inverse_affine @ np.append(template(crop_size)[0], 1), det.landmarks[0, 0], atol=1e-3)
    expected = torch.from_numpy(faces[0]).permute(2, 0, 1)[None]
    expected = torch.nn.functional.interpolate(expected, size=(crop_size, crop_size), mode="area")
    got = crops.crops
    inner = slice(crop_size // 8, -crop_size // 8)
    assert psnr(got[..., inner, inner], expected[..., inner, inner]) > 30
    assert face.image_index == 0 and face.image_size == (600, 560)


def test_crop_beyond_the_border_is_padded_not_failed():
    m = similarity(0.5, 0.0, -90.0, -60.0)  # a face cut by the top-left corner
    image, det, _ = place_faces(300, 300, [m])
    for padding in ("reflection", "zeros", "border"):
        crops = align_faces(image, [det], CropOptions(padding=padding))
        assert torch.isfinite(crops.crops).all() and crops.crops.shape == (1, 3, 512, 512)


def test_batches_with_several_faces_per_image():
    maps = [similarity(0.3, 0, 20, 40), similarity(0.25, 10, 220, 60), similarity(0.35, -5, 120, 200)]
    image_a, det_a, _ = place_faces(400, 420, maps, seed=0)
    image_b, det_b, _ = place_faces(400, 420, maps[:1], seed=5)
    crops = align_faces(torch.cat([image_a, image_b]), [det_a, det_b])
    assert [f.image_index for f in crops.faces] == [0, 0, 0, 1]
    assert crops.history == ("crop",)


def _dets():
    boxes = torch.tensor([[300, 10, 400, 110], [0, 0, 40, 40], [150, 150, 350, 350], [100, 0, 160, 60]],
                         dtype=torch.float32)
    scores = torch.tensor([0.95, 0.99, 0.97, 0.5])
    marks = torch.zeros(4, 5, 2) + ((boxes[:, :2] + boxes[:, 2:]) / 2)[:, None]
    return RawDetections(boxes, scores, marks)


def _order(det):
    return [int(b[0]) for b in det.boxes]


@pytest.mark.parametrize("kw,expected", [
    ({}, [150, 300, 0]),                                   # largest first, 0.5 below threshold
    ({"sort": "left_to_right"}, [0, 150, 300]),
    ({"sort": "confidence"}, [0, 150, 300]),
    ({"max_faces": 2}, [150, 300]),
    ({"face_index": 1}, [300]),
    ({"face_index": "0,2"}, [150, 0]),
    ({"face_index": -1}, [150, 300, 0]),                   # -1 = all
    ({"min_face_size": 60}, [150, 300]),
    ({"only_center_face": True}, [150]),
    ({"det_threshold": 0.4}, [150, 300, 100, 0]),
])
def test_face_selection_options(kw, expected):
    threshold = kw.pop("det_threshold", 0.9)
    assert _order(_select(_dets(), threshold, CropOptions(**kw), 400, 500)) == expected


def test_out_of_range_face_index_warns():
    with pytest.warns(RuntimeWarning, match="out of range"):
        det = _select(_dets(), 0.9, CropOptions(face_index=7), 400, 500)
    assert det.boxes.shape[0] == 0


def test_bad_options_are_clear_errors():
    with pytest.raises(FaceRefineError, match="crop size"):
        CropOptions(crop_size=300)
    with pytest.raises(FaceRefineError, match="sort"):
        CropOptions(sort="random")
    with pytest.raises(FaceRefineError, match="face index"):
        CropOptions(face_index="first").indices
    with pytest.raises(FaceRefineError, match="unknown detector"):
        detect_faces(torch.rand(1, 64, 64, 3), CropOptions(detector="yolo"))


def test_tiny_image_gives_no_faces_and_a_warning():
    with pytest.warns(RuntimeWarning):
        crops = crop_faces(torch.rand(1, 8, 8, 3))
    assert crops.is_empty and crops.crops.shape == (0, 3, 512, 512)
