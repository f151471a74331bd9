"""Issue 26, item 11: outputs keep the input's EXIF (orientation reset, as it is applied on load), ICC profile
and DPI, and a grayscale input comes back with one channel at its own bit depth, as photo tools do."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from conftest import run_cli_json


def _icc():
    """A real RGB ICC profile (LittleCMS)."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _icc_for(space: bytes):
    """The same profile declaring another colour space (header bytes 16..20), enough to carry and compare."""
    icc = bytearray(_icc())
    icc[16:20] = space
    return bytes(icc)


def _exif(orientation=1):
    exif = Image.Exif()
    exif[0x010F] = "FaceRefineCam"              # Make
    exif[0x0112] = orientation
    exif.get_ifd(0x8769)[0x9003] = "2024:05:06 07:08:09"  # DateTimeOriginal, in the Exif sub-IFD
    return exif


def _noise(seed=0, size=(40, 48)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _restore(capsys, src, out):
    code, res, err = run_cli_json(capsys, "restore", src, "-o", out, "--restorer", "none", "--device", "cpu")
    assert code == 0, err
    return Path(res["results"][0]["output"])


@pytest.mark.parametrize("suffix,kw", [(".jpg", {"quality": 95}), (".png", {}), (".webp", {"lossless": True}),
                                       (".tif", {})])
def test_exif_icc_and_dpi_survive(capsys, tmp_path, suffix, kw):
    src = tmp_path / f"photo{suffix}"
    icc = _icc()
    Image.fromarray(_noise()).save(src, icc_profile=icc, exif=_exif(6).tobytes(), dpi=(300, 300), **kw)
    out = _restore(capsys, src, tmp_path / "out")
    with Image.open(out) as im:
        assert im.info.get("icc_profile") == icc
        exif = im.getexif()
        assert exif.get(0x010F) == "FaceRefineCam"
        assert exif.get(0x0112, 1) == 1  # the rotation was applied to the pixels
        assert exif.get_ifd(0x8769).get(0x9003) == "2024:05:06 07:08:09"
        if suffix != ".webp":  # WebP has no resolution field
            assert np.allclose(im.info["dpi"], (300, 300), atol=0.5)
        assert im.size == (40, 48)  # orientation 6: stored 48x40, shown 40 wide


def test_16bit_grayscale_png_comes_back_16bit_grayscale(capsys, tmp_path):
    gray = np.random.default_rng(1).integers(0, 65536, (40, 48), dtype=np.uint16)
    Image.fromarray(gray).save(tmp_path / "scan.png")  # mode I;16
    out = _restore(capsys, tmp_path / "scan.png", tmp_path / "out")
    import cv2
    back = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and back.shape == (40, 48)
    assert np.array_equal(back, gray)


def test_8bit_grayscale_jpeg_with_gray_profile_comes_back_grayscale(capsys, tmp_path):
    gray = _noise(2)[..., 0]
    icc = _icc_for(b"GRAY")
    Image.fromarray(gray, "L").save(tmp_path / "bw.jpg", quality=95, icc_profile=icc)
    out = _restore(capsys, tmp_path / "bw.jpg", tmp_path / "out")
    with Image.open(out) as im:
        assert im.mode == "L" and im.info.get("icc_profile") == icc


def test_16bit_colour_png_keeps_its_profile_and_depth(capsys, tmp_path):
    import cv2
    arr = np.random.default_rng(3).integers(0, 65536, (40, 48, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "plain.png"), arr)
    with Image.open(tmp_path / "plain.png") as im:  # PIL cannot write 16-bit colour: add iCCP + pHYs by hand
        assert im.size == (48, 40)
    icc = _icc()
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = (tmp_path / "plain.png").read_bytes()
    extra = chunk(b"iCCP", b"wide\0\0" + zlib.compress(icc)) + chunk(b"pHYs", struct.pack(">IIB", 11811, 11811, 1))
    (tmp_path / "deep.png").write_bytes(raw[:33] + extra + raw[33:])
    out = _restore(capsys, tmp_path / "deep.png", tmp_path / "out")
    back = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and np.array_equal(back, arr)
    with Image.open(out) as im:
        assert im.info.get("icc_profile") == icc and np.allclose(im.info["dpi"], (300, 300), atol=0.5)


def test_a_cmyk_profile_is_not_put_on_rgb_pixels(capsys, tmp_path):
    from facerefine.core.image_io import load_image, save_image
    Image.fromarray(_noise(4)).save(tmp_path / "x.png", icc_profile=_icc_for(b"CMYK"))
    loaded = load_image(tmp_path / "x.png")
    save_image(tmp_path / "y.png", loaded.image, like=loaded)
    with Image.open(tmp_path / "y.png") as im:
        assert "icc_profile" not in im.info


def test_16bit_colour_tiff_says_its_profile_is_not_kept(capsys, tmp_path):
    tifffile = pytest.importorskip("tifffile")
    arr = np.random.default_rng(5).integers(0, 65536, (40, 48, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "deep.tif", arr, photometric="rgb", iccprofile=_icc())
    code, res, err = run_cli_json(capsys, "restore", tmp_path / "deep.tif", "-o", tmp_path / "out",
                                  "--restorer", "none", "--device", "cpu")
    assert code == 0, err
    assert any("ICC profile not kept" in w for w in res["results"][0]["warnings"])
    import cv2
    back = cv2.imread(res["results"][0]["output"], cv2.IMREAD_UNCHANGED)[..., ::-1]
    assert back.dtype == np.uint16 and np.array_equal(back, arr)
