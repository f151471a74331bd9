"""Video decode/encode with PyAV (``pip install av``, the optional extra ``facerefine[video]``).

Frames stream through in chunks: nothing holds the whole clip. The writer keeps the source's frame
timing (its frame rate, and its timestamps for variable-rate clips) and passes the first audio track
through: copied as it is when the output container accepts the codec, else re-encoded (AAC, or Opus
for WebM). Output goes to a unique temporary file next to the target and is renamed only when
complete, so a failed run never leaves a half-written video under the target name.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from ...errors import FaceRefineError
from ...models.tempfiles import unique_temp_path
from ..output_paths import write_output

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}
_VIDEO_CODECS = {"webm": "libvpx-vp9", "avi": "mpeg4"}
# audio codecs each container takes as they are (others are re-encoded)
_AUDIO_COPY = {"mp4": {"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"},
               "mov": {"aac", "mp3", "alac", "ac3", "pcm_s16le", "pcm_s24le", "pcm_f32le"},
               "matroska": None,  # anything
               "webm": {"opus", "vorbis"},
               "avi": {"mp3", "ac3", "pcm_s16le"}}


def is_video(path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def require_av():
    try:
        import av
    except ImportError as err:
        raise FaceRefineError("video input/output needs PyAV: pip install av  (or pip install facerefine[video])") \
            from err
    return av


@dataclass(frozen=True)
class FrameFormat:
    """What a written video stream needs to know of its frames."""
    width: int
    height: int
    fps: Fraction
    time_base: Optional[Fraction] = None  # keep the source's timestamps unit (ignored for AVI / MPEG-4)


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: Fraction
    frames: int            # 0 when the container does not say
    duration: float        # seconds (0 when unknown)
    has_audio: bool
    audio_codec: Optional[str]
    codec: str
    time_base: Optional[Fraction] = None  # of the video stream: the unit of its frames' timestamps

    @property
    def frame_format(self) -> FrameFormat:
        return FrameFormat(self.width, self.height, self.fps, self.time_base)


def _checked_stream(c, path):
    """The first video stream, its frame size (from the stream header) checked against the pixel limit
    (FACEREFINE_MAX_PIXELS) before any frame is decoded."""
    from ..image_io import check_pixel_limit
    if not c.streams.video:
        raise FaceRefineError(f"{Path(path).name} has no video stream")
    vs = c.streams.video[0]
    check_pixel_limit(vs.codec_context.width, vs.codec_context.height, Path(path).name)
    return vs


def probe(path) -> VideoInfo:
    av = require_av()
    try:
        with av.open(str(path)) as c:
            vs = _checked_stream(c, path)
            fps = vs.average_rate or vs.guessed_rate or Fraction(25)
            duration = float(vs.duration * vs.time_base) if vs.duration else \
                (c.duration / 1e6 if c.duration else 0.0)
            frames = int(vs.frames or 0) or (int(round(duration * fps)) if duration else 0)
            audio = c.streams.audio[0] if c.streams.audio else None
            return VideoInfo(vs.codec_context.width, vs.codec_context.height, Fraction(fps), frames, duration,
                             audio is not None, audio.codec_context.name if audio is not None else None,
                             vs.codec_context.name, Fraction(vs.time_base) if vs.time_base else None)
    except av.error.FFmpegError as err:
        raise FaceRefineError(f"cannot read video {Path(path).name}: {err}") from err


def read_frames(path, chunk: int = 8) -> Iterator[tuple[np.ndarray, list]]:
    """Yield (frames uint8 [n,H,W,3] RGB, [(pts, time_base, duration), ...]) in chunks of at most ``chunk``
    frames (timestamps as the source has them, in its time base; ``pts``/``duration`` may be None)."""
    from ..image_io import check_pixel_limit
    av = require_av()
    try:
        with av.open(str(path)) as c:
            vs = _checked_stream(c, path)
            vs.thread_type = "AUTO"
            buf, stamps = [], []
            for frame in c.decode(vs):
                if frame.width * frame.height > vs.codec_context.width * vs.codec_context.height:
                    check_pixel_limit(frame.width, frame.height, Path(path).name)  # the size changed mid-stream
                buf.append(frame.to_ndarray(format="rgb24"))
                stamps.append((frame.pts, frame.time_base, frame.duration or None))
                if len(buf) >= chunk:
                    yield np.stack(buf), stamps
                    buf, stamps = [], []
            if buf:
                yield np.stack(buf), stamps
    except av.error.FFmpegError as err:
        raise FaceRefineError(f"cannot decode video {Path(path).name}: {err}") from err


class VideoWriter:
    """Encode RGB frames to ``path`` at the source's rate, passing the source's audio through.

    Use as a context manager; ``write(frames uint8 [n,H,W,3], stamps)`` with the reader's stamps.
    ``time_base``: the source stream's; frames are then written at their source timestamps exactly, so a
    variable-rate clip keeps its timing (and its sync with the copied audio). AVI has no per-frame timestamps
    (and MPEG-4 Part 2 takes no fine time base): there, frames go to the nearest tick of the average rate.
    """

    def __init__(self, path, frames: FrameFormat, audio_from=None, codec: Optional[str] = None, crf: int = 18,
                 audio: bool = True, namer=None):
        width, height, fps, time_base = frames.width, frames.height, frames.fps, frames.time_base
        av = require_av()
        self.path = Path(path)
        self.namer = namer  # core.output_paths.OutputNamer: the name is reserved when the clip is complete
        suffix = self.path.suffix.lower()
        if suffix not in _FORMATS:
            raise FaceRefineError(f"cannot write {self.path.name}: use one of {', '.join(VIDEO_SUFFIXES)}")
        self.format = _FORMATS[suffix]
        self.tmp = unique_temp_path(self.path)  # fits wherever the final name fits
        self.fps = Fraction(fps).limit_denominator(1_000_000)
        self.width, self.height = int(width), int(height)
        self.container = av.open(str(self.tmp), mode="w", format=self.format)
        name = codec or _VIDEO_CODECS.get(self.format, "libx264")
        self.stream = self.container.add_stream(name, rate=self.fps)
        self.stream.width, self.stream.height = self.width, self.height
        even = self.width % 2 == 0 and self.height % 2 == 0
        self.stream.pix_fmt = "yuv420p" if even or name == "mpeg4" else "yuv444p"
        if name in ("libx264", "libx265", "libvpx-vp9"):
            self.stream.options = {"crf": str(int(crf))} if name != "libvpx-vp9" else \
                {"crf": str(int(crf) + 12), "b": "0"}
        else:
            self.stream.bit_rate = max(2_000_000, self.width * self.height * 8)
        self.time_base = Fraction(1, 1) / self.fps if self.fps else Fraction(1, 25)
        if time_base and self.format != "avi" and name != "mpeg4":
            self.time_base = Fraction(time_base)
        self.stream.codec_context.time_base = self.time_base
        self.frame_ticks = max(1, round(1 / (self.fps * self.time_base))) if self.fps else 1  # one frame, in ticks
        self.last_pts, self.next_pts = -1, 0
        self._durations: dict = {}  # pts -> the source frame's duration (ticks), until its packet is muxed
        self.audio_in = None
        self.audio_out = None
        self.audio_transcode = False
        self._audio_packets = None
        self._audio_done = False
        if audio and audio_from is not None:
            self._open_audio(av, audio_from)

    # --- audio pass-through -----------------------------------------------------------------
    def _open_audio(self, av, source) -> None:
        src = av.open(str(source))
        if not src.streams.audio:
            src.close()
            return
        astream = src.streams.audio[0]
        allowed = _AUDIO_COPY.get(self.format)
        name = astream.codec_context.name
        if allowed is None or name in allowed:
            self.audio_out = self.container.add_stream_from_template(astream)
        else:
            target = "libopus" if self.format == "webm" else ("mp3" if self.format == "avi" else "aac")
            if target == "mp3" and "libmp3lame" in av.codecs_available:
                target = "libmp3lame"
            rate = astream.codec_context.sample_rate or 48000
            if target == "libopus":
                rate = 48000
            self.audio_out = self.container.add_stream(target, rate=rate)
            try:
                self.audio_out.layout = astream.codec_context.layout.name
            except Exception:  # noqa: BLE001 - keep the encoder's default layout
                pass
            self.audio_transcode = True
        self.audio_in = src
        self._astream = astream
        self._audio_packets = src.demux(astream)

    def _pump_audio(self, until: Optional[float]) -> None:
        """Mux source audio packets up to ``until`` seconds (all remaining when None)."""
        if self._audio_packets is None or self._audio_done:
            return
        while True:
            if getattr(self, "_pending", None) is not None:
                packet = self._pending
                self._pending = None
            else:
                try:
                    packet = next(self._audio_packets)
                except StopIteration:
                    self._audio_done = True
                    break
            if packet.dts is None and packet.pts is None:
                if self.audio_transcode:
                    for out in self.audio_out.encode(None):
                        self.container.mux(out)
                continue
            t = float((packet.pts if packet.pts is not None else packet.dts) * packet.time_base)
            if until is not None and t > until:
                self._pending = packet
                break
            if self.audio_transcode:
                for frame in packet.decode():
                    frame.pts = None
                    for out in self.audio_out.encode(frame):
                        self.container.mux(out)
            else:
                packet.stream = self.audio_out
                self.container.mux(packet)
        if self._audio_done and self.audio_transcode:
            for out in self.audio_out.encode(None):
                self.container.mux(out)

    # --- video ----------------------------------------------------------------------------------
    def write(self, frames: np.ndarray, stamps: Optional[list] = None) -> None:
        av = require_av()
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 [n,H,W,3], got {frames.dtype} {frames.shape}")
        if frames.shape[1:3] != (self.height, self.width):
            raise FaceRefineError(f"frame size {frames.shape[2]}x{frames.shape[1]} differs from the video's "
                                  f"{self.width}x{self.height}")
        for k, arr in enumerate(frames):
            pts, stamp = self.next_pts, stamps[k] if stamps is not None and k < len(stamps) else (None, None)
            src_pts, tb, *duration = stamp
            if src_pts is not None and tb:  # the source's timestamp: exact when its time base is ours
                pts = max(self.last_pts + 1, int(round(src_pts * tb / self.time_base)))
                if duration and duration[0]:  # the encoder leaves packet durations to the muxer's guess
                    self._durations[pts] = max(1, int(round(duration[0] * tb / self.time_base)))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            frame.pts = pts
            frame.time_base = self.time_base
            self.last_pts, self.next_pts = pts, pts + self.frame_ticks
            self._mux_video(self.stream.encode(frame))
            self._pump_audio(float(pts * self.time_base) + 0.5)

    def _mux_video(self, packets) -> None:
        for packet in packets:
            packet.duration = self._durations.pop(packet.pts, packet.duration)  # the last one sets the length
            self.container.mux(packet)

    def close(self, ok: bool = True) -> None:
        try:
            if ok:
                self._mux_video(self.stream.encode())
                self._pump_audio(None)
        finally:
            self.container.close()
            if self.audio_in is not None:
                self.audio_in.close()
        if ok:  # ``path`` may become a counter name when another run took it meanwhile
            self.path = write_output(self.path, lambda target: os.replace(self.tmp, target) or target,
                                     namer=self.namer)
        elif self.tmp.exists():
            self.tmp.unlink()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            try:
                self.close(ok=False)
            except Exception:  # noqa: BLE001 - the original error matters more
                if self.tmp.exists():
                    self.tmp.unlink()
        else:
            self.close(ok=True)
