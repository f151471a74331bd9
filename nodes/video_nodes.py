"""FaceRefine Restore Video: an IMAGE batch taken as the frames of a clip (a video loader's output).

Faces are tracked across frames, their landmarks smoothed, and restored with a lookup state shared
along each track and colour correction per track (core.video), so restored faces do not flicker.
Frames run in chunks (bounded memory; a chunk that runs out of memory is retried in halves).
"""
from __future__ import annotations

import copy

from ..core import controls
from . import runtime as rt


NONE_CHOICE = "none"


class FaceRefineRestoreVideo:
    @classmethod
    def INPUT_TYPES(cls):
        rt.register_model_folders()
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The frames of a clip, in order (e.g. a video loader's IMAGE "
                                                "batch)."}),
                "restorer": (rt.restorer_choices(extra=[NONE_CHOICE]), {
                    "default": rt.default_restorer(),
                    "tooltip": "Weights in models/facerestore_models; none = track, crop and paste back only."}),
                "quality": controls.comfy_input("quality", tooltip=rt.tooltip("quality")),
                "fidelity": controls.comfy_input("fidelity", tooltip=rt.tooltip("fidelity")),
                "temporal": ("FLOAT", {"default": 0.7, "min": 0.0, "max": 0.95, "step": 0.05,
                                       "tooltip": "How much of the previous frame's result each frame keeps, "
                                                  "per face track (see temporal_mode). 0 = every frame on its "
                                                  "own (flickers)."}),
                "smooth_landmarks": ("BOOLEAN", {"default": True,
                                                 "tooltip": "Steady crop boxes: One-Euro filter on the landmarks."}),
                "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 240.0, "step": 0.001,
                                  "tooltip": "Frame rate of the clip (tunes the landmark filter)."}),
                "chunk": ("INT", {"default": 8, "min": 1, "max": 256,
                                  "tooltip": "Frames processed at once (lower = less memory)."}),
                "detector": controls.comfy_input("detector"),
                "crop_size": controls.comfy_input("crop_size"),
                "visibility": controls.comfy_input("visibility"),
                "color_correction": controls.comfy_input(
                    "color_correction", tooltip="Colour matching with statistics averaged along each track."),
                "device": (rt.DEVICE_CHOICES, {"default": "auto", "tooltip": rt.tooltip("device")}),
                "temporal_mode": (["flow", "latent", "flow+latent"], {
                    "default": "flow",
                    "tooltip": "flow: the previous frame's restored face, warped onto this frame by optical flow, "
                               "is blended in where it agrees (no smearing). latent: the previous lookup latent "
                               "and code choices are blended without a warp. flow+latent: both."}),
            },
        }

    RETURN_TYPES = ("IMAGE", "MASK", "STRING")
    RETURN_NAMES = ("images", "mask", "report")
    OUTPUT_TOOLTIPS = ("The frames with every tracked face restored and pasted back.",
                       "Where faces were pasted (paste weights, 0..1), per frame.",
                       "Frames, face tracks, warnings and timings.")
    FUNCTION = "restore"
    CATEGORY = rt.CATEGORY
    DESCRIPTION = ("Video mode: restores the faces of an IMAGE batch as frames of one clip. Faces are tracked "
                   "(face 0 stays the same person), crop boxes are steadied and the restorer's choices are "
                   "shared along each track, so faces do not flicker. Runs in chunks of frames.")

    def restore(self, images, restorer=NONE_CHOICE, quality=1.0, fidelity=0.5, temporal=0.7, smooth_landmarks=True,
                fps=25.0, chunk=8, detector="auto", crop_size=512, visibility=1.0, color_correction="lab",
                device="auto", temporal_mode="flow"):
        import torch

        from ..core.pipeline import RestoreOptions
        from ..core.video import SequenceRestorer, VideoOptions

        rt.register_model_folders()
        dev = rt.get_device(device)
        restorer_arg = NONE_CHOICE
        handle = None
        if restorer and restorer.lower() != NONE_CHOICE:
            restorer_arg = str(rt.weights_path(restorer, "facerestore_models"))
            if float(temporal) > 0:
                from ..core.lookup.restorer import load_restorer
                handle = rt.cached_model(restorer_arg, dev, lambda: load_restorer(restorer_arg, dev), "video_restorer")
        options = RestoreOptions.from_values(restorer=restorer_arg, quality=quality, fidelity=fidelity,
                                             device=str(dev), crop_size=crop_size, detector=detector,
                                             visibility=visibility, color_correction=color_correction)
        video = VideoOptions(chunk=int(chunk), temporal=float(temporal), temporal_mode=str(temporal_mode),
                             smooth=bool(smooth_landmarks))
        seq = SequenceRestorer(options, video, fps=float(fps), restorer=handle)
        total = int(images.shape[0])
        progress = rt.Progress(total)
        outs, masks, tracks = [], [], set()
        faces = 0
        start = 0
        size = video.chunk
        while start < total:
            stop = min(start + size, total)
            rt.check_interrupted()
            saved = _snapshot(seq)
            try:
                res = seq.process(images[start:stop])
            except Exception as err:  # noqa: BLE001 - only OOM is handled (halve the chunk), the rest re-raised
                if not rt.is_oom(err) or size == 1:
                    raise
                _restore(seq, saved)
                rt.soft_empty_cache()
                size = max(1, size // 2)
                continue
            outs.append(res.images.float().clamp(0, 1))
            masks.append(res.masks.float())
            tracks.update(res.track_ids)
            faces += len(res.track_ids)
            progress.update(stop - start)
            start = stop
        rt.soft_empty_cache()
        out = torch.cat(outs) if outs else images
        mask = torch.cat(masks) if masks else torch.zeros(images.shape[:3])
        lines = [f"frames: {total}", f"face tracks: {len(tracks)} ({faces} faces restored)",
                 f"restorer: {restorer}, temporal {float(temporal):g} ({temporal_mode})"]
        if seq.timings:
            lines.append("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in seq.timings.items()))
        lines += [f"warning: {w}" for w in dict.fromkeys(seq.notes)]
        return rt.node_output((out, mask, "\n".join(lines)), rt.compare_ui(images[:1], out[:1]))


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
