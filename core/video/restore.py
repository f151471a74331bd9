"""Restore face tracks in frame sequences (a video, or a ComfyUI IMAGE batch), chunk by chunk.

``SequenceRestorer`` keeps the state between chunks (tracks, landmark filters, the temporal lookup
and the per-track colour statistics), so a clip is processed a few frames at a time with bounded
memory. ``restore_video`` streams a file through it with PyAV.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ...errors import FaceRefineError
from ..crop.step import detect_faces
from ..crop.align import crop_one, estimate_affine
from ..crop.warp import invert_affine, mapped_box
from ..heap import release_free_memory
from ..image_io import sanitize_images
from ..paste.step import face_masks, paste_back
from ..types import FaceCrops, FaceInfo
from .flow import GUIDES, FlowBlend
from .smooth import OneEuroFilter, SmoothOptions, face_scale, smooth_sequence
from .temporal import TemporalLookup, TrackColor
from .track import FaceTracker, TrackedFace, TrackOptions, appearance_embedding

log = logging.getLogger("facerefine")

EMBED_SIZE = 64
TEMPORAL_MODES = ("flow", "latent", "flow+latent")


@dataclass(frozen=True)
class VideoOptions:
    chunk: int = 8                     # frames per batch (bounded memory)
    temporal: float = 0.7              # 0 = per-frame restoration; else blend weight of the previous frame
    temporal_mode: str = "flow"        # flow: previous restored face warped by optical flow, blended by confidence;
    #                                    latent: previous latent/codes blended unwarped; flow+latent: both
    flow_tolerance: float = 0.08       # flow mode: colour difference where the blend weight falls to 1/e
    flow_guide: str = "input"          # flow mode: the flow is estimated on the input crops or the restored ones
    output_blend: Optional[float] = None  # blend of the restored crops (None: 0 with a codebook, else temporal)
    color_momentum: float = 0.8        # running colour statistics per track (0 = per frame)
    smooth: bool = True                # One-Euro smoothing of the landmarks
    smoothing: SmoothOptions = field(default_factory=SmoothOptions)
    lookahead: bool = False            # offline: two passes, zero-phase smoothing (decodes the clip twice)
    tracking: TrackOptions = field(default_factory=TrackOptions)
    tracks: Optional[tuple[int, ...]] = None  # restore only these track ids (None = all)
    crf: int = 18                      # output quality (x264 CRF)
    codec: Optional[str] = None        # None = per container (libx264; VP9 for .webm)
    audio: bool = True                 # pass the source's audio through

    def __post_init__(self) -> None:
        if self.chunk < 1:
            raise FaceRefineError(f"chunk must be >= 1, got {self.chunk}")
        if not 0.0 <= self.temporal < 1.0:
            raise FaceRefineError(f"temporal must be within 0..1 (0 = per frame), got {self.temporal}")
        if self.temporal_mode not in TEMPORAL_MODES:
            raise FaceRefineError(f"temporal_mode must be one of {TEMPORAL_MODES}, got '{self.temporal_mode}'")
        if self.flow_guide not in GUIDES:
            raise FaceRefineError(f"flow_guide must be one of {GUIDES}, got '{self.flow_guide}'")
        if self.flow_tolerance <= 0:
            raise FaceRefineError(f"flow_tolerance must be > 0, got {self.flow_tolerance}")
        if not 0.0 <= self.color_momentum < 1.0:
            raise FaceRefineError(f"color_momentum must be within 0..1, got {self.color_momentum}")


@dataclass
class SequenceResult:
    images: torch.Tensor                      # [B,H,W,3]
    masks: torch.Tensor                       # [B,H,W]
    tracks: list[list[TrackedFace]]           # per frame, the faces restored (after smoothing)
    face_crops: FaceCrops                     # restored crops of the chunk (image_index within the chunk)
    original_crops: FaceCrops
    track_ids: list[int]


class SequenceRestorer:
    """Stateful restorer of consecutive frames; call ``process`` with successive chunks."""

    def __init__(self, options, video: VideoOptions = VideoOptions(), fps: float = 25.0,
                 embed: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, restorer=None,
                 planned: Optional[list[list[TrackedFace]]] = None):
        from ..pipeline import build_steps, resolve_device
        # no exemplar detail on video: the nearest exemplar may change from frame to frame (flicker)
        options = dataclasses.replace(options, lookup=dataclasses.replace(options.lookup, exemplar_detail=0.0))
        self.options, self.video = options, video
        self.device = resolve_device(options.device)
        self.crop_opts = dataclasses.replace(options.crop_options(self.device), face_index=None,
                                             only_center_face=False)
        self.paste_opts = options.paste_options(self.device)
        self.embed = embed or appearance_embedding
        self.tracker = FaceTracker(video.tracking)
        self.smoothing = dataclasses.replace(video.smoothing, fps=float(fps) or 25.0)
        self.filters: dict[int, OneEuroFilter] = {}
        self.planned = planned  # precomputed (smoothed) tracks per frame: skips detection (look-ahead pass 2)
        self.frame = 0
        self.timings: dict = {}
        self.notes: list[str] = []
        self.temporal = None
        self.flow = None
        self.steps = None
        if options.wants_restorer:
            if video.temporal > 0:
                if restorer is None:
                    from ...models.restorers import load_restorer
                    restorer = load_restorer(options.lookup.restorer, self.device,
                                             quality_condition=options.lookup.quality_condition or None)
                mode = video.temporal_mode
                latent = video.temporal if "latent" in mode else 0.0
                self.temporal = TemporalLookup(restorer, options.lookup, latent, video.output_blend)
                if "flow" in mode:
                    self.flow = FlowBlend(video.temporal, video.flow_tolerance, video.flow_guide)
                if self.temporal.note:
                    self.notes.append(self.temporal.note)
                if options.refine.wanted:
                    self.notes.append("video mode: the identity refine step runs per frame only with --temporal 0; "
                                      "it is skipped here")
            else:
                self.steps = build_steps(options)
        color = self.paste_opts.color_correction
        self.color = TrackColor(color, video.color_momentum) if (color != "none" and video.temporal > 0) else None

    # --- tracking ------------------------------------------------------------------------------
    def track(self, images: torch.Tensor) -> list[list[TrackedFace]]:
        """Detect and track faces in a chunk [B,H,W,3]; landmarks are smoothed (causal One-Euro)."""
        images = sanitize_images(images)
        start = time.perf_counter()
        dets = detect_faces(images, self.crop_opts, self.timings)
        out = []
        for b, det in enumerate(dets):
            n = det.boxes.shape[0]
            marks = det.landmarks.double().numpy().reshape(n, 5, 2)
            emb = None
            if n:
                thumbs = torch.stack([crop_one(images[b], estimate_affine(m, EMBED_SIZE), EMBED_SIZE)
                                      for m in marks])
                emb = self.embed(thumbs).double().numpy()
            faces = self.tracker.update(marks, det.boxes.double().numpy(), det.scores.double().numpy(), emb)
            active = {t.track_id for t in self.tracker.tracks}
            for tid in [t for t in self.filters if t not in active]:
                del self.filters[tid]
            if self.temporal is not None:
                self.temporal.forget(active)
            if self.flow is not None:
                self.flow.forget(active)
            if self.video.smooth:
                faces = [self._smoothed(f) for f in faces]
            out.append(faces)
            self.frame += 1
        self.timings["track"] = self.timings.get("track", 0.0) + time.perf_counter() - start
        return out

    def _smoothed(self, face: TrackedFace) -> TrackedFace:
        filt = self.filters.setdefault(face.track_id, OneEuroFilter(self.smoothing))
        marks = filt(face.landmarks, scale=face_scale(face.landmarks)).reshape(5, 2)
        return dataclasses.replace(face, landmarks=marks)

    # --- restoration -------------------------------------------------------------------------------
    def process(self, frames: torch.Tensor, tracks: Optional[list[list[TrackedFace]]] = None) -> SequenceResult:
        """Restore a chunk of frames [B,H,W,3] (float 0..1); ``tracks`` skips detection (precomputed)."""
        images = sanitize_images(frames)
        if tracks is None and self.planned is not None:
            tracks = self.planned[self.frame:self.frame + images.shape[0]]
            self.frame += images.shape[0]
            if len(tracks) != images.shape[0]:
                raise FaceRefineError("the look-ahead pass saw fewer frames than the clip has")
        if tracks is None:
            tracks = self.track(images)
        if self.video.tracks is not None:
            keep = set(self.video.tracks)
            tracks = [[f for f in faces if f.track_id in keep] for faces in tracks]
        crops = self._crops(images, tracks)
        ids = [f.track_id for faces in tracks for f in faces]
        restored = crops
        t0 = time.perf_counter()
        paste_opts = self.paste_opts
        if not crops.is_empty:
            if self.temporal is not None:
                restored = self.temporal(crops, ids)
                if self.flow is not None:
                    restored = self.flow(restored, crops.crops, ids)
            elif self.steps:
                from ..pipeline import restore_faces
                restored, _latent = restore_faces(crops, self.steps, self.notes, self.timings)
            self.timings["restore"] = self.timings.get("restore", 0.0) + time.perf_counter() - t0
            if self.color is not None:
                masks = face_masks(restored, paste_opts)
                restored = self.color(restored, crops.crops, masks, ids)
                paste_opts = dataclasses.replace(paste_opts, color_correction="none")
        out, masks = paste_back(images, restored, paste_opts, self.timings)
        return SequenceResult(out, masks, tracks, restored, crops, ids)

    def _crops(self, images: torch.Tensor, tracks: list[list[TrackedFace]]) -> FaceCrops:
        size = self.crop_opts.crop_size
        height, width = images.shape[1:3]
        crops, faces = [], []
        for b, frame_faces in enumerate(tracks):
            for f in frame_faces:
                affine = estimate_affine(f.landmarks, size)
                inverse = invert_affine(affine)
                x0, y0, x1, y1 = mapped_box(inverse, size, size)
                if x1 < 0 or y1 < 0 or x0 >= width or y0 >= height:
                    continue  # a carried track that left the frame
                crops.append(crop_one(images[b], affine, size, self.device, self.crop_opts.padding))
                faces.append(FaceInfo(affine=affine, inverse_affine=inverse, landmarks=np.asarray(f.landmarks),
                                      bbox=tuple(float(v) for v in f.box), score=float(f.score), image_index=b,
                                      image_size=(int(height), int(width))))
        if not faces:
            return FaceCrops.empty(size)
        return FaceCrops(torch.stack(crops), tuple(faces), size, history=("crop", "track"))


def smooth_planned(tracks: list[list[TrackedFace]], options: SmoothOptions, lookahead: bool = True
                   ) -> list[list[TrackedFace]]:
    """Offline smoothing of raw tracks (per track id; zero phase with ``lookahead``)."""
    by_id: dict[int, list[tuple[int, int]]] = {}
    for t, faces in enumerate(tracks):
        for k, f in enumerate(faces):
            by_id.setdefault(f.track_id, []).append((t, k))
    out = [list(faces) for faces in tracks]
    for places in by_id.values():
        seq = np.stack([tracks[t][k].landmarks for t, k in places])
        scale = np.array([face_scale(m) for m in seq])
        smooth = smooth_sequence(seq, options, lookahead=lookahead, scale=scale)
        for (t, k), marks in zip(places, smooth):
            out[t][k] = dataclasses.replace(out[t][k], landmarks=marks)
    return out


def restore_video(src, dst, options, video: VideoOptions = VideoOptions(),
                  progress: Optional[Callable[[int, int], None]] = None, restorer=None, namer=None) -> dict:
    """Restore every face of a video file into ``dst`` (never ``src``); returns a summary dict.

    With ``namer`` (core.output_paths.OutputNamer) ``dst`` is reserved when the clip is complete, and
    becomes the next counter name if another run wrote it meanwhile (the summary's ``output``).

    Free heap pages are returned after every chunk, so memory stays flat over long clips."""
    from .io import VideoWriter, probe, read_frames
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve():
        raise FaceRefineError(f"output {dst} is the input video; choose another name")
    info = probe(src)
    start = time.perf_counter()
    planned = None
    if video.lookahead:
        raw = dataclasses.replace(video, smooth=False)
        tracker = SequenceRestorer(dataclasses.replace(options, restorer="none"), raw, fps=float(info.fps))
        planned = []
        for frames, _ in read_frames(src, video.chunk):
            planned += tracker.track(torch.from_numpy(frames).float() / 255.0)
        planned = smooth_planned(planned, dataclasses.replace(video.smoothing, fps=float(info.fps)))
    seq = SequenceRestorer(options, video, fps=float(info.fps), restorer=restorer, planned=planned)
    done = faces = 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    with VideoWriter(dst, info.frame_format, audio_from=src if video.audio else None, codec=video.codec,
                     crf=video.crf, namer=namer) as writer:
        for frames, stamps in read_frames(src, video.chunk):
            res = seq.process(torch.from_numpy(frames).float() / 255.0)
            out = (res.images.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()
            writer.write(out, stamps)
            release_free_memory()
            done += len(frames)
            faces += len(res.track_ids)
            if progress is not None:
                progress(done, max(info.frames, done))
    return {"input": str(src), "output": str(writer.path), "frames": done, "fps": float(info.fps),
            "size": [info.width, info.height], "audio": info.has_audio and video.audio, "faces": faces,
            "tracks": seq.tracker.next_id if planned is None else len({f.track_id for fr in planned for f in fr}),
            "temporal": video.temporal, "temporal_mode": video.temporal_mode if video.temporal > 0 else None,
            "lookahead": video.lookahead, "warnings": list(dict.fromkeys(seq.notes)),
            "seconds": round(time.perf_counter() - start, 3),
            "timings": {k: round(v, 4) for k, v in seq.timings.items()}}
