"""Synthetic face clips for the video tests and the flicker evaluation.

``make_clip`` moves one still portrait (a London set photo) along a smooth random affine path
(rotation, scale and translation, each a sum of two slow sinusoids with random phase) and degrades
every frame on its own (Gaussian noise, then a real JPEG round trip). Because the motion is known,
the true 5-point landmarks and the true crop alignment of every frame are known too, which the
tracking, smoothing and flicker measurements use as ground truth.

``make_crossing`` puts two portraits in one wide frame and moves them past each other (one above
the other) so that their paths cross, with optional detector drop-outs (frames where a face is
hidden), for the tracking tests.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..core.crop.warp import compose, invert_affine, warp


@dataclass
class SyntheticClip:
    clean: torch.Tensor         # [T,H,W,3] float 0..1
    degraded: torch.Tensor      # [T,H,W,3] float 0..1
    landmarks: np.ndarray       # [T,5,2] true landmarks in frame pixels
    frame_from_photo: np.ndarray  # [T,2,3] the motion applied to the photo
    fps: float = 25.0


def load_photo(path, size: Optional[int] = None) -> torch.Tensor:
    """A photo as [H,W,3] float 0..1 (optionally resized to size x size)."""
    import cv2
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(path)
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(img).float() / 255.0


def reference_landmarks(photo: torch.Tensor, detector: str = "mtcnn") -> np.ndarray:
    """5 landmarks of the (single, largest) face of a clean photo [H,W,3], by the crop step's detector."""
    from ..core.crop.options import CropOptions
    from ..core.crop.step import detect_faces
    det = detect_faces(photo[None], CropOptions(detector=detector, max_faces=1))[0]
    if det.landmarks.shape[0] == 0:
        raise ValueError("no face found in the reference photo")
    return det.landmarks[0].double().numpy()


def smooth_path(frames: int, seed: int = 0, rotation_deg: float = 6.0, scale: float = 0.08,
                shift: float = 0.12) -> np.ndarray:
    """[T,4] rotation (rad), log-scale, dx, dy (fractions of the frame) along a smooth random path."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / max(frames - 1, 1)
    amps = np.array([math.radians(rotation_deg), math.log1p(scale), shift, shift])
    out = np.zeros((frames, 4))
    for k in range(4):
        for _ in range(2):
            freq = rng.uniform(0.3, 1.2)      # cycles over the clip: slow, smooth motion
            phase = rng.uniform(0, 2 * math.pi)
            out[:, k] += 0.5 * amps[k] * np.sin(2 * math.pi * freq * t + phase)
    return out


def motion_matrix(params: np.ndarray, photo_size: tuple[int, int], frame_size: int, zoom: float) -> np.ndarray:
    """2x3 map photo pixels -> frame pixels: fit the photo into the frame (``zoom``), then rotate/scale/shift."""
    ph, pw = photo_size
    rot, log_s, dx, dy = params
    s = zoom * frame_size / max(ph, pw) * math.exp(log_s)
    c, si = math.cos(rot) * s, math.sin(rot) * s
    cx, cy = (pw - 1) / 2, (ph - 1) / 2
    fx, fy = (frame_size - 1) / 2 + dx * frame_size, (frame_size - 1) / 2 + dy * frame_size
    return np.array([[c, -si, fx - c * cx + si * cy], [si, c, fy - si * cx - c * cy]])


def degrade_frames(frames: torch.Tensor, seed: int = 0, noise: float = 10 / 255, jpeg_quality: int = 40
                   ) -> torch.Tensor:
    """Per-frame Gaussian noise (fresh each frame) then JPEG. [T,H,W,3] -> [T,H,W,3]."""
    from .degrade import gaussian_noise, jpeg
    gen = torch.Generator().manual_seed(seed)
    x = frames.permute(0, 3, 1, 2).contiguous()
    x = gaussian_noise(x, noise, generator=gen)
    x = jpeg(x, jpeg_quality)
    return x.permute(0, 2, 3, 1).contiguous()


def render(photo: torch.Tensor, matrices: np.ndarray, frame_size: int) -> torch.Tensor:
    src = photo.permute(2, 0, 1)[None]
    return torch.cat([warp(src, m, frame_size, frame_size, mode="bicubic", padding="border")
                      for m in matrices]).clamp(0, 1).permute(0, 2, 3, 1).contiguous()


def make_clip(photo: torch.Tensor, landmarks: np.ndarray, frames: int = 48, frame_size: int = 256,
              seed: int = 0, zoom: float = 1.0, noise: float = 10 / 255, jpeg_quality: int = 40,
              fps: float = 25.0, **path_kw) -> SyntheticClip:
    """One portrait [H,W,3] moved along a smooth random affine path; ``landmarks`` are its 5 points."""
    params = smooth_path(frames, seed, **path_kw)
    mats = np.stack([motion_matrix(p, tuple(photo.shape[:2]), frame_size, zoom) for p in params])
    clean = render(photo, mats, frame_size)
    marks = np.stack([np.hstack([landmarks, np.ones((5, 1))]) @ m.T for m in mats])
    degraded = degrade_frames(clean, seed + 1, noise, jpeg_quality)
    return SyntheticClip(clean, degraded, marks, mats, fps)


def true_crop_affines(clip: SyntheticClip, photo_landmarks: np.ndarray, crop_size: int) -> np.ndarray:
    """[T,2,3] frame pixels -> aligned crop pixels, from the photo's alignment and the known motion."""
    from ..core.crop.align import estimate_affine
    photo_to_crop = estimate_affine(photo_landmarks, crop_size)
    return np.stack([compose(photo_to_crop, invert_affine(m)) for m in clip.frame_from_photo])


@dataclass
class CrossingClip:
    frames: torch.Tensor        # [T,H,W,3]
    landmarks: np.ndarray       # [T,2,5,2]: true landmarks of person A (0) and B (1)
    visible: np.ndarray         # [T,2] bool: False where the face is hidden (a detector drop-out)


def make_crossing(photo_a: torch.Tensor, marks_a: np.ndarray, photo_b: torch.Tensor, marks_b: np.ndarray,
                  frames: int = 24, height: int = 320, width: int = 640, face_frac: float = 0.6,
                  vertical_gap: float = 0.0, hide: Optional[dict] = None) -> CrossingClip:
    """A moves left to right, B right to left, crossing mid-clip. ``hide`` = {person: [frame, ...]} replaces
    that person's face by a flat grey patch in those frames (as a detector miss)."""
    hide = hide or {}
    canvas = torch.full((frames, height, width, 3), 0.5)
    tile = int(height * face_frac)
    all_marks = np.zeros((frames, 2, 5, 2))
    visible = np.ones((frames, 2), dtype=bool)
    xs_a = np.linspace(0.05 * width, width - 1.05 * tile - 0.05 * width + tile * 0.05, frames)
    xs_b = xs_a[::-1]
    ys = [(height - tile) / 2 - vertical_gap * height / 2, (height - tile) / 2 + vertical_gap * height / 2]
    for p, (photo, marks, xs) in enumerate(((photo_a, marks_a, xs_a), (photo_b, marks_b, xs_b))):
        ph, pw = photo.shape[:2]
        s = tile / max(ph, pw)
        for t in range(frames):
            if t in hide.get(p, ()):
                visible[t, p] = False
            m = np.array([[s, 0.0, 0.0], [0.0, s, 0.0]])
            img = warp(photo.permute(2, 0, 1)[None], m, tile, tile, mode="bilinear", padding="border")[0]
            x0, y0 = int(round(xs[t])), int(round(ys[p]))
            m[:, 2] = (x0, y0)
            all_marks[t, p] = np.hstack([marks, np.ones((5, 1))]) @ m.T
            region = canvas[t, y0:y0 + tile, x0:x0 + tile]
            patch = img.permute(1, 2, 0)[:region.shape[0], :region.shape[1]]
            if not visible[t, p]:
                patch = torch.full_like(patch, 0.5)
            canvas[t, y0:y0 + region.shape[0], x0:x0 + region.shape[1]] = patch
    return CrossingClip(canvas.clamp(0, 1), all_marks, visible)


def london_photos(root, count: int = 2, start: int = 0) -> list[Path]:
    files = sorted(Path(root, "neutral").glob("*.jpg"))
    return files[start:start + count]


def write_clip_file(path, photo: torch.Tensor, seconds: float = 30.0, width: int = 1280, height: int = 720,
                    fps: int = 25, seed: int = 0, face_height: float = 0.8, noise: float = 6 / 255,
                    jpeg_quality: int = 60, chunk: int = 25, crf: int = 20) -> dict:
    """A synthetic video file: ``photo`` moved along a smooth random path in a ``width`` x ``height`` frame
    (low motion: a few cycles over the clip), degraded per frame, written chunk by chunk with PyAV (H.264),
    so memory does not depend on the length. For the memory/throughput check of ``restore clip.mp4``."""
    import av
    frames = int(round(seconds * fps))
    params = smooth_path(frames, seed, rotation_deg=4.0, scale=0.05, shift=0.06)
    src = photo.permute(2, 0, 1)[None]
    gen_seed = seed + 1
    with av.open(str(path), mode="w") as c:
        stream = c.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(int(crf)), "preset": "veryfast"}
        for start in range(0, frames, chunk):
            mats = []
            for p in params[start:start + chunk]:
                m = motion_matrix(p, tuple(photo.shape[:2]), height, face_height)
                m[0, 2] += (width - height) / 2          # centred in the wide frame
                mats.append(m)
            clean = torch.cat([warp(src, m, height, width, mode="bilinear", padding="border") for m in mats])
            clean = clean.clamp(0, 1).permute(0, 2, 3, 1).contiguous()
            degraded = degrade_frames(clean, gen_seed + start, noise, jpeg_quality)
            for f in (degraded * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).numpy():
                for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)
    return {"path": str(path), "frames": frames, "fps": fps, "size": [width, height]}


def main(argv=None) -> dict:
    """python -m facerefine.lab.video_clip --out clip.mp4 [--seconds 30] [--width 1280] [--height 720] [--photo P]"""
    import argparse
    import json
    p = argparse.ArgumentParser(description="write a synthetic face clip (a London portrait moving in a frame)")
    p.add_argument("--out", required=True)
    p.add_argument("--photo", default=None, help="default: the first London set portrait (../shared/data/london)")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    out = Path(a.out)
    if out.exists():
        raise SystemExit(f"{out} exists; choose another name")
    photo_path = a.photo
    if photo_path is None:
        photos = london_photos(Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "london", 1)
        if not photos:
            raise SystemExit("no London portrait found; pass --photo")
        photo_path = photos[0]
    res = write_clip_file(out, load_photo(photo_path, 512), a.seconds, a.width, a.height, a.fps, a.seed)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
