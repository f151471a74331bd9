"""Temporal evaluation on a synthetic clip: flicker and PSNR of per-frame vs temporal restoration,
and landmark jitter of raw vs smoothed tracks.

    python -m facerefine.lab.video_eval [--photo PATH] [--restorer auto] [--frames 48] [--size 256]
        [--modes latent,flow,flow+latent] [--flow-tolerance 0.06] [--save-frames DIR] [--json]

The clip is ``lab.video_clip.make_clip`` on a London set portrait (``../shared/data/london``). Flicker
(``lab.eval.flicker``) is measured on crops taken through the true alignment of every frame, so the
numbers of the clean clip, the degraded input, per-frame and temporal restoration are comparable.

Temporal restoration is measured in each ``--modes`` (``VideoOptions.temporal_mode``), one column each:
``latent`` (the previous frame's latent and code probabilities blended without a warp; the column that was
called ``temporal`` before the flow blend existed), ``flow`` (the previous restored crop warped by optical
flow and blended by confidence) and ``flow+latent``. ``flicker_ratio`` and ``psnr_delta_db`` are given per
mode under ``vs_per_frame``, and at the top level for the default mode (``default_mode``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from ..core.pipeline import RestoreOptions
from ..core.video import SequenceRestorer, VideoOptions, jitter
from ..core.video.restore import TEMPORAL_MODES
from ..core.video.smooth import drift
from .eval.flicker import face_psnr, frame_psnr, track_flicker
from .video_clip import load_photo, london_photos, make_clip, reference_landmarks, true_crop_affines

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "london"


def run_sequence(frames: torch.Tensor, options: RestoreOptions, video: VideoOptions, fps: float = 25.0,
                 restorer=None):
    seq = SequenceRestorer(options, video, fps=fps, restorer=restorer)
    outs, tracks = [], []
    for i in range(0, frames.shape[0], video.chunk):
        res = seq.process(frames[i:i + video.chunk])
        outs.append(res.images)
        tracks += res.tracks
    return torch.cat(outs), tracks, seq


def track_landmarks(tracks, track_id: int = 0) -> np.ndarray:
    return np.stack([next(f.landmarks for f in faces if f.track_id == track_id) for faces in tracks])


def evaluate(photo_path=None, restorer: str = "auto", frames: int = 48, size: int = 256, zoom: float = 1.4,
             seed: int = 0, chunk: int = 8, temporal: float = VideoOptions.temporal, crop_size: int = 256, device: str = "cpu",
             log=print, modes=TEMPORAL_MODES, flow_tolerance: float = VideoOptions.flow_tolerance,
             save_frames=None) -> dict:
    photo_path = photo_path or london_photos(DATA, 1)[0]
    photo = load_photo(photo_path, 384)
    marks = reference_landmarks(photo)
    clip = make_clip(photo, marks, frames=frames, frame_size=size, seed=seed, zoom=zoom)
    affines = true_crop_affines(clip, marks, 128)
    from ..core.crop.options import CropOptions
    base = RestoreOptions.from_values(restorer=restorer, device=device,
                                      crop=CropOptions(detector="mtcnn", crop_size=crop_size))
    default_mode = VideoOptions.temporal_mode
    result = {"photo": Path(photo_path).name, "frames": frames, "size": size, "restorer": restorer,
              "temporal": temporal, "modes": list(modes), "default_mode": default_mode,
              "flow_tolerance": flow_tolerance}
    # landmark jitter: raw detections vs causal One-Euro vs offline look-ahead
    none = dataclasses.replace(base, lookup=dataclasses.replace(base.lookup, restorer="none"))
    _, raw_tracks, _ = run_sequence(clip.degraded, none, VideoOptions(chunk=chunk, smooth=False))
    _, sm_tracks, _ = run_sequence(clip.degraded, none, VideoOptions(chunk=chunk))
    from ..core.video import smooth_planned
    la_tracks = smooth_planned(raw_tracks, VideoOptions().smoothing)
    named = (("raw", raw_tracks), ("one_euro", sm_tracks), ("lookahead", la_tracks))
    result["jitter_px"] = {name: round(jitter(track_landmarks(t), clip.landmarks), 4) for name, t in named}
    result["drift_px"] = {name: round(drift(track_landmarks(t), clip.landmarks), 4) for name, t in named}
    result["flicker"] = {"clean": track_flicker(clip.clean, affines), "input": track_flicker(clip.degraded, affines)}
    result["face_psnr"] = {"input": float(face_psnr(clip.degraded, clip.clean, affines).mean())}
    result["frame_psnr"] = {"input": float(frame_psnr(clip.degraded, clip.clean).mean())}
    result["seconds"] = {}
    if restorer != "none":
        from ..models.restorers import load_restorer
        handle = load_restorer(restorer, device)
        runs = [("per_frame", VideoOptions(chunk=chunk, temporal=0.0))]
        runs += [(mode, VideoOptions(chunk=chunk, temporal=temporal, temporal_mode=mode,
                                     flow_tolerance=flow_tolerance)) for mode in modes]
        for name, video in runs:
            start = time.perf_counter()
            out, _, seq = run_sequence(clip.degraded, base, video, restorer=handle)
            result["seconds"][name] = round(time.perf_counter() - start, 2)
            result["flicker"][name] = track_flicker(out, affines)
            result["face_psnr"][name] = float(face_psnr(out, clip.clean, affines).mean())
            result["frame_psnr"][name] = float(frame_psnr(out, clip.clean).mean())
            if save_frames:
                Path(save_frames).mkdir(parents=True, exist_ok=True)
                torch.save(out, Path(save_frames) / f"{name.replace('+', '_')}.pt")
            log(f"{name}: flicker {result['flicker'][name]:.5f}, face PSNR {result['face_psnr'][name]:.3f} dB "
                f"({result['seconds'][name]} s)")
        pf_flicker, pf_psnr = max(result["flicker"]["per_frame"], 1e-12), result["face_psnr"]["per_frame"]
        result["vs_per_frame"] = {m: {"flicker_ratio": round(result["flicker"][m] / pf_flicker, 4),
                                      "psnr_delta_db": round(result["face_psnr"][m] - pf_psnr, 4)} for m in modes}
        if default_mode in modes:
            result["flicker_ratio"] = result["vs_per_frame"][default_mode]["flicker_ratio"]
            result["psnr_delta_db"] = result["vs_per_frame"][default_mode]["psnr_delta_db"]
    for k in ("flicker", "face_psnr", "frame_psnr"):
        result[k] = {n: round(v, 5) for n, v in result[k].items()}
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photo", default=None)
    p.add_argument("--restorer", default="auto")
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--zoom", type=float, default=1.4)
    p.add_argument("--temporal", type=float, default=VideoOptions.temporal)
    p.add_argument("--chunk", type=int, default=8)
    p.add_argument("--crop-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--modes", default=",".join(TEMPORAL_MODES),
                   help=f"temporal modes to measure, comma-separated ({', '.join(TEMPORAL_MODES)})")
    p.add_argument("--flow-tolerance", type=float, default=VideoOptions.flow_tolerance)
    p.add_argument("--save-frames", default=None, help="folder for the restored clips ([T,H,W,3] .pt per column)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in TEMPORAL_MODES]
    if bad:
        p.error(f"unknown mode(s) {bad}; choose from {TEMPORAL_MODES}")
    res = evaluate(a.photo, a.restorer, a.frames, a.size, a.zoom, a.seed, a.chunk, a.temporal, a.crop_size,
                   a.device, log=(lambda *x: None) if a.json else print, modes=modes,
                   flow_tolerance=a.flow_tolerance, save_frames=a.save_frames)
    print(json.dumps(res) if a.json else json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
