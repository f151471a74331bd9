"""FaceRefine Restore Video: an IMAGE batch taken as the frames of a clip (a video loader's output).

Faces are tracked across frames, their landmarks smoothed, and restored with a lookup state shared
along each track and colour correction per track (core.video), so restored faces do not flicker.
Frames run in chunks (bounded memory; a chunk that runs out of memory is retried in halves).
The restoration inputs are the table's controls (core/controls.py, front end "video"); ``restore_clip`` does
the work.
"""
from __future__ import annotations

import copy

from . import conventions as nc

# the video's own inputs, at the places the first node version had them (a saved workflow lists its widget
# values in input order): after the restorer's controls, and temporal_mode after the table's required inputs
VIDEO_INPUTS = {
    "temporal": ("FLOAT", {"default": 0.7, "min": 0.0, "max": 0.95, "step": 0.05,
                           "tooltip": "How much of the previous frame's result each frame keeps, per face track "
                                      "(see temporal_mode). 0 = every frame on its own (flickers)."}),
    "smooth_landmarks": ("BOOLEAN", {"default": True, "tooltip": "Steady crop boxes: One-Euro filter on the "
                                                                 "landmarks."}),
    "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 240.0, "step": 0.001,
                      "tooltip": "Frame rate of the clip (tunes the landmark filter)."}),
    "chunk": ("INT", {"default": 8, "min": 1, "max": 256, "tooltip": "Frames processed at once (lower = less "
                                                                     "memory)."}),
}
TEMPORAL_MODE = ("temporal_mode", (["flow", "latent", "flow+latent"], {
    "default": "flow",
    "tooltip": "flow: the previous frame's restored face, warped onto this frame by optical flow, is blended in "
               "where it agrees (no smearing). latent: the previous lookup latent and code choices are blended "
               "without a warp. flow+latent: both."}))
TOOLTIPS = {"restorer": "Weights in models/facerestore_models; none = track, crop and paste back only.",
            "color_correction": "Colour matching with statistics averaged along each track."}


class FaceRefineRestoreVideo:
    @classmethod
    def INPUT_TYPES(cls):
        from ..core import controls
        inputs = nc.control_inputs("video", TOOLTIPS)
        table = list(inputs["required"].items())
        cut = sum(1 for name, _ in table if controls.BY_NAME[name].option.startswith("lookup."))
        frames = ("IMAGE", {"tooltip": "The frames of a clip, in order (e.g. a video loader's IMAGE batch)."})
        inputs["required"] = {"images": frames, **dict(table[:cut]), **VIDEO_INPUTS, **dict(table[cut:]),
                              TEMPORAL_MODE[0]: TEMPORAL_MODE[1]}
        return inputs

    RETURN_TYPES = ("IMAGE", "MASK", "STRING")
    RETURN_NAMES = ("images", "mask", "report")
    OUTPUT_TOOLTIPS = ("The frames with every tracked face restored and pasted back.",
                       "Where faces were pasted (paste weights, 0..1), per frame.",
                       "Frames, face tracks, warnings and timings.")
    FUNCTION = "restore"
    CATEGORY = nc.CATEGORY
    DESCRIPTION = ("Video mode: restores the faces of an IMAGE batch as frames of one clip. Faces are tracked "
                   "(face 0 stays the same person), crop boxes are steadied and the restorer's choices are "
                   "shared along each track, so faces do not flicker. Runs in chunks of frames.")

    def restore(self, images, temporal=0.7, smooth_landmarks=True, fps=25.0, chunk=8, temporal_mode="flow",
                **values):
        from ..core.video import VideoOptions
        video = VideoOptions(chunk=int(chunk), temporal=float(temporal), temporal_mode=str(temporal_mode),
                             smooth=bool(smooth_landmarks))
        return restore_clip(images, values, video, float(fps))


def restore_clip(images, values: dict, video, fps: float):
    """The node's work: the frames restored along face tracks in chunks (a chunk that runs out of memory is
    retried in halves); (frames, mask, report) + the compare widget of the first frame."""
    import torch

    from ..core.pipeline import RestoreOptions
    from ..core.video import SequenceRestorer

    options = RestoreOptions.from_values(**nc.pipeline_values(values))
    seq = SequenceRestorer(options, video, fps=fps, restorer=_restorer(options, video))
    outs, masks, tracks, faces = _chunks(seq, images, video.chunk)
    nc.soft_empty_cache()
    out = torch.cat(outs) if outs else images
    mask = torch.cat(masks) if masks else torch.zeros(images.shape[:3])
    lines = [f"frames: {int(images.shape[0])}", f"face tracks: {len(tracks)} ({faces} faces restored)",
             f"restorer: {values.get('restorer')}, temporal {video.temporal:g} ({video.temporal_mode})"]
    if seq.timings:
        lines.append("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in seq.timings.items()))
    lines += [f"warning: {w}" for w in dict.fromkeys(seq.notes)]
    return nc.node_output((out, mask, "\n".join(lines)), nc.compare_ui(images[:1], out[:1]))


def _restorer(options, video):
    """The restorer loaded once for the whole clip (temporal blending reads its lookup state), else None."""
    if not options.wants_restorer or video.temporal <= 0:
        return None
    from ..models.restorers import load_restorer
    path, device = options.lookup.restorer, options.device
    return nc.cached_model(path, device, lambda: load_restorer(path, device), "video_restorer")


def _chunks(seq, images, size: int):
    total = int(images.shape[0])
    progress = nc.Progress(total)
    outs, masks, tracks, faces, start = [], [], set(), 0, 0
    while start < total:
        stop = min(start + size, total)
        nc.check_interrupted()
        saved = _snapshot(seq)
        try:
            res = seq.process(images[start:stop])
        except Exception as err:  # noqa: BLE001 - only OOM is handled (halve the chunk), the rest re-raised
            if not nc.is_oom(err) or size == 1:
                raise
            _restore(seq, saved)
            nc.soft_empty_cache()
            size = max(1, size // 2)
            continue
        outs.append(res.images.float().clamp(0, 1))
        masks.append(res.masks.float())
        tracks.update(res.track_ids)
        faces += len(res.track_ids)
        progress.update(stop - start)
        start = stop
    return outs, masks, tracks, faces


def _snapshot(seq):
    """What a chunk changes in the sequence state (to retry a chunk after out-of-memory)."""
    return (copy.deepcopy(seq.tracker), copy.deepcopy(seq.filters), seq.frame,
            dict(seq.temporal.states) if seq.temporal is not None else None,
            dict(seq.color.states) if seq.color is not None else None,
            dict(seq.flow.states) if seq.flow is not None else None)


def _restore(seq, saved) -> None:
    seq.tracker, seq.filters, seq.frame, temporal, color, flow = saved
    if temporal is not None:
        seq.temporal.states = temporal
    if color is not None:
        seq.color.states = color
    if flow is not None:
        seq.flow.states = flow


NODES = {
    "FaceRefineRestoreVideo": (FaceRefineRestoreVideo, "FaceRefine Restore Video (IMAGE batch)"),
}
