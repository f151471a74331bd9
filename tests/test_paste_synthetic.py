"""Paste-back on synthetic faces with known geometry (no weights needed)."""
import numpy as np
import pytest
import torch

from crop_fixtures import place_faces, psnr, similarity
from facerefine.core.crop.step import align_faces
from facerefine.core.paste.options import PasteOptions
from facerefine.core.paste.step import face_masks, paste_back
from facerefine.core.paste.color import lab_transfer, lowfreq_transfer
from facerefine.core.paste.masks import face_outline, soften
from facerefine.core.types import FaceCrops
from facerefine.errors import FaceRefineError


@pytest.fixture(scope="module")
def scene():
    maps = [similarity(0.45, 8.0, 60.0, 50.0), similarity(0.3, -15.0, 330.0, 120.0)]
    image, det, _ = place_faces(420, 520, maps)
    return image, align_faces(image, [det])


def test_roundtrip_without_restoration(scene):
    image, crops = scene
    for cc in ("none", "lab", "lowfreq"):
        out, masks = paste_back(image, crops, PasteOptions(color_correction=cc))
        inside = masks[0] > 0
        assert inside.any() and (~inside).any()
        assert torch.equal(out[0][~inside], image[0][~inside])  # bit-identical outside
        assert psnr(out[0][inside], image[0][inside]) >= 40, cc


def test_mask_follows_the_face_not_the_box(scene):
    image, crops = scene
    m = face_masks(crops, PasteOptions(mask="landmarks"))
    assert m.shape == (2, 512, 512)
    assert m[:, 290, 256].min() == 1.0                  # between nose and mouth: full weight
    for y, x in ((5, 5), (5, 506), (506, 5), (506, 506), (60, 100), (470, 90)):
        assert m[:, y, x].max() == 0.0                  # crop corners / background stay out
    hair = face_masks(crops, PasteOptions(mask="landmarks", protect_hair=True))
    assert hair[0, :200].sum() < m[0, :200].sum() * 0.8  # the forehead / hairline is protected
    box = face_masks(crops, PasteOptions(mask="box", erode=0, feather=0))
    assert box.min() == 1.0


def test_erode_and_feather_shrink_and_soften():
    outline = [np.array([[192.98, 239.95], [318.9, 240.19], [256.63, 314.02], [201.26, 371.41], [313.09, 371.15]])]
    from facerefine.core.paste.masks import landmark_masks
    hard = landmark_masks(outline, 512)
    assert set(torch.unique(hard[:, 300]).tolist()) <= {0.0, 1.0} or hard.max() == 1.0
    eroded = soften(hard, 20, 0)
    soft = soften(hard, 0, 16)
    assert eroded.sum() < hard.sum()
    assert ((soft > 0) & (soft < 1)).sum() > ((hard > 0) & (hard < 1)).sum() * 5
    assert (soft <= hard + 1e-6).all()  # soft edge ends at the outline
    assert len(face_outline(outline[0])) == 72


def test_restored_face_lands_inside_and_nowhere_else(scene):
    image, crops = scene
    red = torch.zeros_like(crops.crops)
    red[:, 0] = 1.0
    out, masks = paste_back(image, crops.with_crops(red, "test"), PasteOptions(color_correction="none"))
    full = masks[0] >= 0.999
    assert full.sum() > 2000
    assert torch.allclose(out[0][full], torch.tensor([1.0, 0.0, 0.0]), atol=1e-3)
    assert torch.equal(out[0][masks[0] == 0], image[0][masks[0] == 0])


def test_visibility_blend(scene):
    image, crops = scene
    white = crops.with_crops(torch.ones_like(crops.crops), "test")
    out0, _ = paste_back(image, white, PasteOptions(visibility=0.0, color_correction="none"))
    assert torch.equal(out0, image)
    half, masks = paste_back(image, white, PasteOptions(visibility=0.5, color_correction="none"))
    assert float(masks.max()) == pytest.approx(0.5)
    full = masks[0] >= 0.4999
    assert torch.allclose(half[0][full], (image[0][full] + 1) / 2, atol=1e-4)


def test_scale_aware_paste_into_upscaled_target(scene):
    image, crops = scene
    red = torch.zeros_like(crops.crops)
    red[:, 0] = 1.0
    red = crops.with_crops(red, "test")
    options = PasteOptions(color_correction="none")
    _, m1 = paste_back(image, red, options)
    big = torch.nn.functional.interpolate(image.permute(0, 3, 1, 2), scale_factor=2, mode="bicubic",
                                          align_corners=False).clamp(0, 1).permute(0, 2, 3, 1)
    out2, m2 = paste_back(big, red, options)
    assert m2.shape == (1, 840, 1040)
    assert float(m2.sum() / m1.sum()) == pytest.approx(4.0, rel=0.02)
    ys, xs = torch.nonzero(m1[0] > 0.5, as_tuple=True)
    ys2, xs2 = torch.nonzero(m2[0] > 0.5, as_tuple=True)
    assert float(xs2.float().mean()) == pytest.approx(2 * float(xs.float().mean()) + 0.5, abs=1.0)
    assert float(ys2.float().mean()) == pytest.approx(2 * float(ys.float().mean()) + 0.5, abs=1.0)
    assert torch.equal(out2[0][m2[0] == 0], big[0][m2[0] == 0])


def test_colour_correction_moves_towards_the_original():
    g = torch.Generator().manual_seed(0)
    original = torch.rand(1, 3, 64, 64, generator=g) * 0.5 + 0.25
    restored = (original * 0.7 + torch.tensor([0.25, 0.0, 0.1]).view(1, 3, 1, 1)).clamp(0, 1)  # colour cast
    mask = torch.ones(1, 1, 64, 64)
    for fn in (lab_transfer, lowfreq_transfer):
        fixed = fn(restored, original, mask)
        err_before = (restored.mean((2, 3)) - original.mean((2, 3))).abs().max()
        err_after = (fixed.mean((2, 3)) - original.mean((2, 3))).abs().max()
        assert err_after < err_before * 0.3, fn.__name__


def test_empty_face_crops_return_the_input():
    image = torch.rand(2, 32, 40, 3)
    out, masks = paste_back(image, FaceCrops.empty())
    assert out is image or torch.equal(out, image)
    assert masks.shape == (2, 32, 40) and masks.max() == 0


def test_face_of_a_missing_image_is_skipped_with_a_warning(scene):
    image, crops = scene
    moved = crops.with_faces([f.__class__(**{**f.__dict__, "image_index": 3}) for f in crops.faces])
    with pytest.warns(RuntimeWarning, match="only 1 image"):
        out, _ = paste_back(image, moved, PasteOptions())
    assert torch.equal(out, image)


def test_nan_in_target_stays_outside_and_is_cleaned_inside(scene):
    image, crops = scene
    noisy = image.clone()
    noisy[0, 0, 0] = float("nan")            # background corner
    noisy[0, 210, 170] = float("nan")        # inside the first face
    out, masks = paste_back(noisy, crops, PasteOptions(color_correction="none"))
    assert torch.isnan(out[0, 0, 0]).all()   # untouched outside the mask
    assert masks[0, 210, 170] > 0.99 and torch.isfinite(out[0, 210, 170]).all()


def test_bad_paste_options():
    with pytest.raises(FaceRefineError):
        PasteOptions(mask="ellipse")
    with pytest.raises(FaceRefineError):
        PasteOptions(visibility=1.5)
    with pytest.raises(FaceRefineError):
        PasteOptions(color_correction="hist")
