"""Motion-compensated recursive filtering of restored face crops (restorer-agnostic temporal consistency).

Consecutive crops of a face track are aligned to smoothed landmarks, which lag a moving face by a pixel
or two, and a face also changes inside its crop (expression, a turn). Blending the previous frame's
restored crop (or the restorer's skips, which hold the input image itself) without registration smears
the detail. ``FlowBlend`` registers first: a dense optical flow (OpenCV DIS) between the previous and the
current crop, the previous *filtered* output warped onto the current crop, and a per-pixel confidence
that falls where the warped previous output disagrees with the current one (an occlusion, a mouth that
opens, a flow error), so those pixels take the current frame alone:

    out_t = cur_t + w * (warp(out_{t-1}) - cur_t),   w = strength * exp(-(d / tolerance)^2)

where ``d`` is the locally averaged colour difference between the warped previous output and the current
restored crop (and between the warped previous and the current guide image, which catches occlusions the
restored crops could agree on). It works on the restored crops of any restorer (codebook or not), after the
lookup. A cut or a jump of the crop box resets the track, and so does a frame where little of the face
can be registered.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..types import FaceCrops
from .temporal import TrackStates, is_small_motion, relative_affine

GUIDES = ("input", "restored")


@dataclass
class _FlowState:
    affine: np.ndarray
    guide: np.ndarray          # [h,w] uint8 grey guide image at the flow size
    out: np.ndarray            # [S,S,3] float32: the filtered output of the previous frame


def _grey(crop: np.ndarray, size: int) -> np.ndarray:
    import cv2
    img = crop if crop.shape[0] == size else cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
    return (grey.clip(0, 1) * 255.0 + 0.5).astype(np.uint8)


class FlowBlend(TrackStates):
    """Per-track recursive blend of restored crops with the previous output, warped by dense optical flow.

    strength: the blend weight where the warped previous output agrees with the current frame (0 = off).
    tolerance: colour difference (0..1 units, locally averaged) at which the weight has fallen to 1/e.
    guide: 'input' (the degraded crops) or 'restored' (the per-frame restored crops) for the flow.
    flow_size: the flow is computed at most at this size (and scaled up to the crop).
    min_confidence: below this mean weight (relative to ``strength``) over the crop, the track starts afresh.
    """

    def __init__(self, strength: float = 0.7, tolerance: float = 0.08, guide: str = "input",
                 flow_size: int = 256, sigma: float = 1.5, min_confidence: float = 0.15):
        import cv2
        if not 0.0 <= strength < 1.0:
            raise ValueError(f"flow blend strength must be within 0..1 (exclusive of 1), got {strength}")
        if guide not in GUIDES:
            raise ValueError(f"flow guide must be one of {GUIDES}, got '{guide}'")
        if tolerance <= 0:
            raise ValueError(f"flow tolerance must be > 0, got {tolerance}")
        self.strength, self.tolerance, self.guide = float(strength), float(tolerance), guide
        self.flow_size, self.sigma, self.min_confidence = int(flow_size), float(sigma), float(min_confidence)
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        self.states: dict[int, _FlowState] = {}
        self.last_confidence: list[float] = []   # mean weight / strength of each face of the last call


    def _blend(self, st: _FlowState, cur: np.ndarray, guide: np.ndarray) -> tuple[np.ndarray, float]:
        """The previous output warped onto ``cur`` and blended by confidence; (output, mean confidence)."""
        import cv2
        size, g = cur.shape[0], guide.shape[0]
        # flow from the current guide to the previous one: guide(x) ~ prev_guide(x + flow(x))
        flow = self._dis.calc(guide, st.guide, None)
        ys, xs = np.mgrid[0:g, 0:g].astype(np.float32)
        gx, gy = xs + flow[..., 0], ys + flow[..., 1]
        warped_guide = cv2.remap(st.guide, gx, gy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        inside = ((gx >= 0) & (gx <= g - 1) & (gy >= 0) & (gy <= g - 1)).astype(np.float32)
        if g != size:
            k = size / g
            flow = cv2.resize(flow, (size, size), interpolation=cv2.INTER_LINEAR) * k
            inside = cv2.resize(inside, (size, size), interpolation=cv2.INTER_LINEAR)
            ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
            gx, gy = xs + flow[..., 0], ys + flow[..., 1]
        warped = cv2.remap(st.out, gx, gy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        sigma = self.sigma * size / 256.0
        d_out = cv2.GaussianBlur(np.abs(warped - cur).mean(axis=2), (0, 0), sigma)
        d_guide = cv2.GaussianBlur(np.abs(warped_guide.astype(np.float32) - guide.astype(np.float32)) / 255.0,
                                   (0, 0), sigma * g / size)
        if g != size:
            d_guide = cv2.resize(d_guide, (size, size), interpolation=cv2.INTER_LINEAR)
        tol = self.tolerance
        conf = np.exp(-(d_out / tol) ** 2) * np.exp(-(d_guide / (2 * tol)) ** 2) * inside
        w = (self.strength * conf)[..., None]
        return cur + w * (warped - cur), float(conf.mean())

    @torch.inference_mode()
    def __call__(self, restored: FaceCrops, original: Optional[torch.Tensor], track_ids: list[int]) -> FaceCrops:
        """restored: FACE_CROPS (in frame order); original: the input crops [N,3,S,S] (the 'input' guide)."""
        n = len(restored)
        if len(track_ids) != n:
            raise ValueError(f"{n} faces but {len(track_ids)} track ids")
        self.last_confidence = []
        if n == 0 or self.strength <= 0:
            return restored
        size = restored.crop_size
        g = min(size, self.flow_size)
        cur_all = restored.crops.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        src = original if (self.guide == "input" and original is not None) else restored.crops
        guide_all = src.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        outs = []
        for i, tid in enumerate(track_ids):
            cur = np.ascontiguousarray(cur_all[i], dtype=np.float32)
            guide = _grey(guide_all[i], g)
            affine = restored.faces[i].affine
            st = self.states.get(tid)
            out, conf = cur, 0.0
            if st is not None and is_small_motion(relative_affine(st.affine, affine), size):
                blended, conf = self._blend(st, cur, guide)
                if conf >= self.min_confidence:   # else: a cut or an occlusion, the track starts afresh
                    out = blended
            self.last_confidence.append(conf)
            self.states[tid] = _FlowState(np.asarray(affine, dtype=np.float64), guide, out)
            outs.append(torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1))
        crops = torch.stack(outs).clamp(0, 1).to(device=restored.crops.device, dtype=restored.crops.dtype)
        return restored.with_crops(crops, f"temporal:flow{self.strength:g}")
