"""Video in/out (core.video.io + `restore clip.mp4`): frame count, size, frame rate and audio survive."""
import json
from fractions import Fraction

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from facerefine.core.video.io import FrameFormat, VideoWriter, probe, read_frames  # noqa: E402

FPS = Fraction(24000, 1001)


def write_clip(path, frames: np.ndarray, fps=FPS, audio=True, sr=44100):
    """An H.264 clip (+ a 440 Hz AAC tone) written with PyAV itself."""
    c = av.open(str(path), "w")
    vs = c.add_stream("libx264", rate=fps)
    vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    vs.options = {"crf": "10"}
    a = None
    if audio:
        a = c.add_stream("aac", rate=sr)
        a.layout = "mono"
    for i, f in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
        vf.pts = i
        for p in vs.encode(vf):
            c.mux(p)
    for p in vs.encode():
        c.mux(p)
    if a is not None:
        mux_tone(c, a, sr, len(frames) / fps)
    c.close()


def mux_tone(container, stream, sr: int, seconds: float) -> None:
    """A 440 Hz mono AAC tone of ``seconds`` encoded into ``stream`` and muxed (the clips' audio track)."""
    n = int(sr * seconds)
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / sr)).astype(np.float32)[None]
    for k in range(0, n, 1024):
        af = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, k:k + 1024]), format="fltp", layout="mono")
        af.sample_rate, af.pts = sr, k
        for p in stream.encode(af):
            container.mux(p)
    for p in stream.encode():
        container.mux(p)


def decode_all(path) -> np.ndarray:
    return np.concatenate([f for f, _ in read_frames(path, chunk=4)])


def psnr(a, b) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


def _face_frames(london_dir, n=10, size=160):
    from facerefine.lab.video_clip import load_photo, make_clip, reference_landmarks
    photo = load_photo(sorted((london_dir / "neutral").glob("*.jpg"))[0], 320)
    clip = make_clip(photo, reference_landmarks(photo), frames=n, frame_size=size, zoom=1.4)
    return (clip.degraded.numpy() * 255).round().astype(np.uint8)


@pytest.mark.slow
def test_restore_none_round_trip_keeps_frames_size_rate_and_audio(london_dir, tmp_path):
    from facerefine.cli import main
    frames = _face_frames(london_dir)
    src = tmp_path / "clip.mp4"
    write_clip(src, frames)
    before = src.read_bytes()
    info_in = probe(src)
    torch.set_num_threads(1)
    code = main(["restore", str(src), "-o", str(tmp_path / "out"), "--restorer", "none", "--detector", "mtcnn",
                 "--video-chunk", "4", "--json"])
    assert code == 0
    out = tmp_path / "out" / "clip_restored.mp4"
    info = probe(out)
    assert (info.width, info.height) == (info_in.width, info_in.height) == (160, 160)
    assert info.fps == FPS
    assert info.has_audio and info.audio_codec == "aac"
    got, ref = decode_all(out), decode_all(src)
    assert got.shape == ref.shape == (10, 160, 160, 3)
    # crop + paste back with no restorer changes only resampling noise; the rest is the codec
    assert min(psnr(g, r) for g, r in zip(got, ref)) > 30.0
    assert src.read_bytes() == before                                   # the input is never written
    assert not [p for p in (tmp_path / "out").iterdir() if ".part" in p.name]  # no temporary file left
    with av.open(str(out)) as c:                                         # the audio is the source's (copied)
        a = c.streams.audio[0]
        assert a.codec_context.sample_rate == 44100
        assert abs(float(c.duration / 1e6) - 10 / float(FPS)) < 0.15


def test_writer_keeps_rate_odd_sizes_and_leaves_nothing_on_error(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(5, 46, 64, 3), dtype=np.uint8)
    frames = np.repeat(np.repeat(frames, 2, axis=1), 2, axis=2)[:, :91, :127]   # odd 127x91
    dst = tmp_path / "odd.mkv"
    with VideoWriter(dst, FrameFormat(127, 91, Fraction(30000, 1001))) as w:
        w.write(frames)
    info = probe(dst)
    assert (info.width, info.height, info.fps, info.has_audio) == (127, 91, Fraction(30000, 1001), False)
    assert decode_all(dst).shape == (5, 91, 127, 3)
    bad = tmp_path / "bad.mp4"
    with pytest.raises(Exception):
        with VideoWriter(bad, FrameFormat(64, 64, Fraction(25))) as w:
            w.write(frames)     # wrong size: refused
    assert not bad.exists() and not list(tmp_path.glob(".bad*"))


def test_video_output_naming_never_overwrites(tmp_path):
    """Restoring into the same folder twice gives a counter name; --skip-existing skips instead."""
    from facerefine.cli import main
    frames = np.full((3, 64, 64, 3), 128, np.uint8)
    src = tmp_path / "plain.mp4"
    write_clip(src, frames, audio=False)
    out = tmp_path / "o"
    args = ["restore", str(src), "-o", str(out), "--restorer", "none", "--detector", "mtcnn", "--json"]
    assert main(args) == 0 and main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["plain_restored.mp4", "plain_restored_00001.mp4"]
    assert main(args + ["--skip-existing"]) == 0
    assert len(list(out.iterdir())) == 2
    before = src.read_bytes()
    assert main(["restore", str(src), "-o", str(src), "--restorer", "none", "--detector", "mtcnn", "--json"]) == 0
    assert src.read_bytes() == before                      # -o naming the input writes a counter name instead
    assert (tmp_path / "plain_00001.mp4").is_file()
