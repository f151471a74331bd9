"""Issue 16, items 2 and 6: a pixel limit read from the header before decoding, and image writers that
never share a temporary file."""
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from facerefine.core import image_io
from facerefine.errors import ImageInputError


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A valid PNG signature + IHDR declaring width x height, a few bytes of IDAT, IEND (~100 bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if any pixel decoder runs."""
    import cv2

    def boom(*a, **k):
        raise AssertionError("pixels were decoded")
    monkeypatch.setattr(cv2, "imdecode", boom)
    monkeypatch.setattr(image_io, "_decode", boom)


def test_header_declared_50000_squared_png_is_refused_before_decoding(tmp_path, no_decoding):
    bomb = _png_header_only(tmp_path / "bomb.png", 50000, 50000)
    assert bomb.stat().st_size < 200
    with pytest.raises(image_io.ImageTooLargeError, match=r"bomb\.png: image too large: 2500 MP"):
        image_io.load_image(bomb)


def test_over_the_default_limit_but_under_pils_own(tmp_path, no_decoding):
    big = _png_header_only(tmp_path / "big.png", 9000, 8000)  # 72 MP > 50 MP default
    with pytest.raises(image_io.ImageTooLargeError, match=r"big\.png: image too large: 9000x8000 = 72 MP, "
                                                          r"the limit is 50 MP"):
        image_io.load_image(big)


def test_limit_is_configurable_and_shared_by_tensor_inputs(tmp_path, monkeypatch):
    from PIL import Image
    photo = tmp_path / "small.png"
    Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(photo)
    assert image_io.load_image(photo).size == (40, 60)
    monkeypatch.setenv("FACEREFINE_MAX_PIXELS", "2000")
    with pytest.raises(image_io.ImageTooLargeError, match=r"60x40 = 0 MP, the limit is 0.002 MP"):
        image_io.load_image(photo)
    # ComfyUI / A1111 / pipeline inputs arrive as tensors or arrays: the same limit applies
    with pytest.raises(image_io.ImageTooLargeError):
        image_io.sanitize_images(torch.zeros(1, 40, 60, 3))
    from facerefine.ui import service
    out = service.restore_array(np.zeros((40, 60, 3), np.uint8), service.Settings(restorer="none"))
    assert not out.ok and "image too large" in out.messages[0]
    monkeypatch.setenv("FACEREFINE_MAX_PIXELS", "0")  # 0 = no limit
    image_io.check_pixel_limit(100000, 100000, "x")


def test_a_folder_with_a_bomb_still_loads_the_others(tmp_path):
    from PIL import Image
    _png_header_only(tmp_path / "a_bomb.png", 50000, 50000)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "b_ok.png")
    loaded, errors = [], []
    for path in image_io.list_images([str(tmp_path)]):
        try:
            loaded.append(image_io.load_image(path).path)
        except ImageInputError as err:  # a FaceRefineError: a message, never a cv2.error traceback
            errors.append(str(err))
    assert [Path(p).name for p in loaded] == ["b_ok.png"] and "too large" in errors[0]


def test_app_refuses_the_bomb_from_the_header(tmp_path, no_decoding):
    from facerefine.ui import service
    bomb = _png_header_only(tmp_path / "bomb.png", 50000, 50000)
    out = service.restore_file(bomb, service.Settings(restorer="none"))
    assert not out.ok and out.messages[0].startswith("bomb.png: image too large")


def test_two_image_writers_never_share_a_temporary_file(tmp_path, monkeypatch):
    seen = []
    real = image_io.os.replace

    def spy(src, dst):
        seen.append(Path(src))
        return real(src, dst)

    monkeypatch.setattr(image_io.os, "replace", spy)
    target = tmp_path / "out.png"
    image_io.save_image(target, torch.zeros(1, 8, 8, 3))
    image_io.save_image(target, torch.ones(1, 8, 8, 3))
    assert len(seen) == 2 and seen[0] != seen[1]
    assert all(p.parent == tmp_path and p.name.startswith("out.png.") and p.suffix == ".part" for p in seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_failed_image_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def full_disk(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(image_io.os, "replace", full_disk)
    with pytest.raises(OSError):
        image_io.save_image(tmp_path / "out.png", torch.zeros(1, 8, 8, 3))
    assert list(tmp_path.iterdir()) == []
