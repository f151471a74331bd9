"""Issue 26, item 2: every decoder path checks the declared size (FACEREFINE_MAX_PIXELS) before decoding,
or refuses the file: formats PIL cannot read (a Radiance HDR, even named .png) and video streams."""
import numpy as np
import pytest

from conftest import run_cli_json
from facerefine.core import image_io


def _radiance_hdr(path, width, height):
    """A Radiance HDR header declaring width x height and one flat RLE scanline (a few hundred bytes):
    OpenCV reads it (PIL cannot) and allocates the declared size before it finds the data missing."""
    line = b"\x02\x02" + width.to_bytes(2, "big") + b"".join(b"\xff\x80" * (width // 127 + 1) for _ in range(4))
    path.write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y %d +X %d\n" % (height, width) + line)
    return path


@pytest.fixture
def decoders_must_not_run(monkeypatch):
    """Any pixel decoding fails the test (the refusal must come first)."""
    import cv2
    from PIL import Image, ImageFile

    def boom(*a, **k):
        raise AssertionError("pixels were decoded")
    Image.init()  # PIL's plugins build images when they are imported
    for name in ("imdecode", "imread", "imdecodeWithMetadata"):
        if hasattr(cv2, name):
            monkeypatch.setattr(cv2, name, boom)
    monkeypatch.setattr(Image.Image, "load", boom)
    monkeypatch.setattr(ImageFile.ImageFile, "load", boom)
    monkeypatch.setattr(image_io, "_decode", boom)


def test_radiance_hdr_named_png_is_refused_before_opencv_decodes_it(tmp_path, monkeypatch, decoders_must_not_run):
    monkeypatch.setenv("FACEREFINE_MAX_PIXELS", "1000000")
    bomb = _radiance_hdr(tmp_path / "holiday.png", 12000, 12000)  # 144 MP declared
    assert bomb.stat().st_size < 1000
    with pytest.raises(image_io.ImageInputError, match=r"holiday\.png"):
        image_io.load_image(bomb)


def test_radiance_hdr_in_a_restore_run_is_one_reported_failure(tmp_path, capsys, monkeypatch, decoders_must_not_run):
    monkeypatch.setenv("FACEREFINE_MAX_PIXELS", "1000000")
    _radiance_hdr(tmp_path / "holiday.png", 12000, 12000)
    from facerefine.cli import main
    code = main(["restore", str(tmp_path / "holiday.png"), "-o", str(tmp_path / "out"), "--restorer", "none",
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code != 0 and "holiday.png" in err and "pixels were decoded" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _clip(path, width, height, frames=3):
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=10)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8), format="rgb24")
            frame.pts = i
            for p in vs.encode(frame):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
    return path


def test_video_frame_size_from_the_stream_header_is_checked_before_any_frame_is_decoded(tmp_path, monkeypatch):
    from facerefine.core.video.io import probe, read_frames
    clip = _clip(tmp_path / "clip.mp4", 64, 48)
    assert probe(clip).width == 64 and next(read_frames(clip))[0].shape == (3, 48, 64, 3)
    monkeypatch.setenv("FACEREFINE_MAX_PIXELS", "3000")  # 64 x 48 = 3072 pixels
    with pytest.raises(image_io.ImageTooLargeError, match=r"clip\.mp4: image too large: 64x48"):
        probe(clip)
    frames = read_frames(clip)
    with pytest.raises(image_io.ImageTooLargeError, match=r"clip\.mp4: image too large: 64x48"):
        next(frames)  # not one frame decoded


def test_video_restore_refuses_a_clip_over_the_limit(tmp_path, capsys, monkeypatch):
    clip = _clip(tmp_path / "clip.mp4", 64, 48)
    monkeypatch.setenv("FACEREFINE_MAX_PIXELS", "3000")
    code, res, err = run_cli_json(capsys, "restore", clip, "-o", tmp_path / "out.mp4", "--restorer", "none",
                                  "--device", "cpu")
    assert code != 0 and "image too large: 64x48" in f"{res} {err}"
    assert not (tmp_path / "out.mp4").exists()
