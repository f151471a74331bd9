"""core.image_io: formats a user may hand us keep what matters on the way out."""
import numpy as np
import pytest
import torch
from PIL import Image

from facerefine.core.image_io import list_images, load_image, sanitize_images, save_image
from facerefine.errors import ImageInputError


def _gradient(h=24, w=32):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x / (w - 1), y / (h - 1), (x + y) / (w + h - 2)], -1).astype(np.float32)


def test_grayscale_png_loads_as_rgb(tmp_path):
    gray = (np.arange(24 * 32).reshape(24, 32) % 256).astype(np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    li = load_image(tmp_path / "g.png")
    assert li.image.shape == (1, 24, 32, 3) and li.grayscale and li.alpha is None
    assert torch.equal(li.image[0, ..., 0], li.image[0, ..., 2])
    assert torch.allclose(li.image[0, ..., 1] * 255, torch.from_numpy(gray).float(), atol=1e-3)


def test_rgba_alpha_is_kept(tmp_path):
    rgba = (np.random.default_rng(0).random((20, 30, 4)) * 255).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    li = load_image(tmp_path / "a.png")
    assert li.alpha is not None and li.alpha.shape == (20, 30)
    assert np.array_equal(np.round(li.image[0].numpy() * 255).astype(np.uint8), rgba[..., :3])
    save_image(tmp_path / "b.png", li.image, alpha=li.alpha)
    back = np.asarray(Image.open(tmp_path / "b.png"))
    assert back.shape == (20, 30, 4) and np.array_equal(back, rgba)


def test_16bit_png_precision_kept(tmp_path):
    import cv2
    arr = (np.random.default_rng(1).random((16, 16, 3)) * 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), arr[..., ::-1])
    li = load_image(tmp_path / "d.png")
    assert li.bit_depth == 16
    # values that differ below 8-bit precision survive
    assert np.array_equal(np.round(li.image[0].numpy() * 65535).astype(np.uint16), arr)
    save_image(tmp_path / "e.png", li.image, bit_depth=16)
    back = cv2.imread(str(tmp_path / "e.png"), cv2.IMREAD_UNCHANGED)[..., ::-1]
    assert back.dtype == np.uint16 and np.array_equal(back, arr)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpeg_matches_pil_transpose(tmp_path, orientation):
    from PIL import ImageOps
    img = Image.fromarray((_gradient(24, 40) * 255).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    li = load_image(tmp_path / "r.jpg")
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "r.jpg"))).astype(np.float32) / 255
    assert li.exif_orientation == orientation
    assert li.image.shape[1:3] == expected.shape[:2]
    assert np.abs(li.image[0].numpy() - expected).max() < 2 / 255


def test_nan_pixels_are_replaced_with_warning():
    img = torch.rand(1, 8, 8, 3)
    img[0, 2, 3, 1] = float("nan")
    with pytest.warns(RuntimeWarning, match="NaN"):
        clean = sanitize_images(img)
    assert torch.isfinite(clean).all() and clean[0, 2, 3, 1] == 0


def test_sanitize_layouts():
    assert sanitize_images(torch.rand(8, 9, 1)).shape == (1, 8, 9, 3)
    assert sanitize_images(torch.rand(2, 8, 9, 4)).shape == (2, 8, 9, 3)
    u8 = torch.full((1, 4, 4, 3), 255, dtype=torch.uint8)
    assert sanitize_images(u8).max() == 1.0
    with pytest.raises(ImageInputError):
        sanitize_images(torch.rand(4, 4))
    with pytest.raises(ImageInputError):
        sanitize_images(torch.rand(1, 0, 4, 3))


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageInputError):
        load_image(bad)
    with pytest.raises(ImageInputError):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageInputError):
        list_images([str(tmp_path / "nothing_here")])


def test_jpeg_save_drops_alpha_and_16bit(tmp_path):
    img = torch.rand(1, 10, 12, 3)
    p = save_image(tmp_path / "x.jpg", img, alpha=torch.ones(10, 12), bit_depth=16)
    back = np.asarray(Image.open(p))
    assert back.shape == (10, 12, 3) and back.dtype == np.uint8


def test_list_images_expands_folders(tmp_path):
    for n in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / n).write_bytes(b"x")
    assert [p.name for p in list_images([str(tmp_path)])] == ["a.jpg", "b.png"]
