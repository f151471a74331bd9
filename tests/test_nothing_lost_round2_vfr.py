"""Issue 26 item 4: a variable-frame-rate clip keeps its timing (the source's time base and timestamps), so its
frames stay in sync with the copied audio and its length is kept."""
from fractions import Fraction

import numpy as np
import pytest

av = pytest.importorskip("av")

from test_video_io import mux_tone  # noqa: E402  (the clips' 440 Hz AAC track)

TB = Fraction(1, 90000)
PHONE = [i / 30 for i in range(15)] + [0.5 + i / 24 for i in range(15)]          # 30 fps, then 24 fps
IRREGULAR = list(np.cumsum([0.0] + [0.02, 0.11, 0.03, 0.2, 0.015, 0.06, 0.09, 0.04, 0.25, 0.03, 0.07] * 2))


def write_vfr(path, times, audio=True, size=64, sr=44100):
    """An H.264 clip whose frame i is shown at times[i] seconds (+ an AAC tone), written with PyAV itself."""
    c = av.open(str(path), "w")
    vs = c.add_stream("libx264", rate=30)
    vs.width, vs.height, vs.pix_fmt = size, size, "yuv420p"
    vs.codec_context.time_base = TB
    a = c.add_stream("aac", rate=sr) if audio else None
    if a is not None:
        a.layout = "mono"
    for i, t in enumerate(times):
        frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), i * 8 % 256, np.uint8), format="rgb24")
        frame.pts, frame.time_base = int(round(t / TB)), TB
        for p in vs.encode(frame):
            c.mux(p)
    for p in vs.encode():
        c.mux(p)
    if a is not None:
        mux_tone(c, a, sr, times[-1])
    c.close()


def timing(path) -> dict:
    """Frame times (s), the video stream's time base and length (from the first frame to the last one's end, s),
    and the audio's start and end (s)."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        frames = [(float(f.pts * f.time_base), float((f.duration or 0) * f.time_base)) for f in c.decode(vs)]
        out = {"times": [t for t, _ in frames], "tick": float(vs.time_base), "length": sum(frames[-1]) - frames[0][0]}
    with av.open(str(path)) as c:
        if c.streams.audio:
            packets = [(p.pts, p.duration) for p in c.demux(c.streams.audio[0]) if p.pts is not None]
            tb = c.streams.audio[0].time_base
            out["audio"] = (float(packets[0][0] * tb), float(sum(packets[-1]) * tb))
    return out


@pytest.mark.parametrize("times, name", [(PHONE, "restored.mp4"), (IRREGULAR, "restored.mkv")],
                         ids=["30-then-24fps-mp4", "irregular-mkv"])
def test_restored_video_keeps_the_source_timestamps(tmp_path, times, name):
    from facerefine.cli import main
    src, dst = tmp_path / "clip.mp4", tmp_path / "out" / name
    write_vfr(src, times)
    source = timing(src)
    assert np.allclose(source["times"], times, atol=float(TB))
    assert main(["restore", str(src), "-o", str(dst), "--restorer", "none", "--detector", "mtcnn",
                 "--video-chunk", "4", "--json"]) == 0
    out = timing(dst)
    tick = max(source["tick"], out["tick"])  # an .mkv counts in milliseconds
    assert len(out["times"]) == len(times)
    # before: frames were put on a grid of the average rate, up to 50 ms (phone) / 166 ms (irregular) off
    drift = max(abs(a - b) for a, b in zip(relative(out), relative(source)))
    assert drift <= tick, f"frames moved by up to {drift * 1000:.1f} ms"
    assert abs(out["length"] - source["length"]) <= tick
    # in sync with the audio (an .mkv cannot start before 0, so AAC's priming shifts both streams alike)
    assert out["times"][0] - out["audio"][0] == pytest.approx(source["times"][0] - source["audio"][0], abs=tick)
    if name.endswith(".mp4"):  # the same container and time base: the very same timestamps
        assert out["times"] == source["times"] and out["audio"] == pytest.approx(source["audio"], abs=tick)


def relative(timed: dict) -> list:
    return [t - timed["times"][0] for t in timed["times"]]


def test_writer_without_timestamps_keeps_one_frame_per_tick_of_the_rate(tmp_path):
    """Frames written without stamps (ComfyUI batches) are spaced at the given rate, whatever the time base."""
    from facerefine.core.video.io import FrameFormat, VideoWriter
    frames = np.zeros((6, 32, 32, 3), np.uint8)
    with VideoWriter(tmp_path / "plain.mp4", FrameFormat(32, 32, Fraction(25), TB)) as w:
        w.write(frames)
    assert np.allclose(timing(tmp_path / "plain.mp4")["times"], [i / 25 for i in range(6)], atol=float(TB))
