"""Temporally consistent restoration of face tracks.

Per-frame restoration flickers because every frame picks its codebook entries (and its colour
correction) on its own, from a differently noisy input. Here each track keeps a running state:

- ``TemporalLookup``: the encoder latent (and the fidelity skip features) and the lookup's code
  probabilities of a frame are blended with the previous frame's before the codes are picked and
  decoded. The crops are aligned to the (smoothed) landmarks, so the face already sits at the same place
  in consecutive crops: the previous state needs no warp (``warp_grid`` is there for callers whose crops
  are not aligned).
  Restorers without a codebook (GFPGAN, RestoreFormer) blend their restored crops the same way.
- ``TrackColor``: paste-back colour correction towards a colour target (the original face's statistics)
  that is a running average over the track instead of a per-frame value.

A large change between frames (a cut, a fast turn) resets the track's state, so nothing is smeared.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..crop.warp import compose, invert_affine, scale_matrix, warp
from ..lookup.options import LookupOptions
from ..types import FaceCrops

IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def relative_affine(prev_affine: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Map from the previous frame's crop pixels to this frame's crop pixels (both affines source -> crop)."""
    return compose(affine, invert_affine(prev_affine))


def is_small_motion(rel: np.ndarray, crop_size: int, max_shift: float = 0.25, max_scale: float = 0.2) -> bool:
    """Whether two consecutive crops show nearly the same framing (else the running state is reset)."""
    lin = rel[:, :2]
    scale = float(np.sqrt(abs(np.linalg.det(lin))))
    centre = np.array([crop_size / 2, crop_size / 2])
    moved = lin @ centre + rel[:, 2] - centre
    return abs(scale - 1.0) <= max_scale and float(np.linalg.norm(moved)) <= max_shift * crop_size


def warp_grid(x: torch.Tensor, rel: np.ndarray, crop_size: int) -> torch.Tensor:
    """Warp a map [N,C,h,w] laid over a crop of ``crop_size`` by the crop-pixel affine ``rel``."""
    if np.allclose(rel, IDENTITY, atol=1e-4):
        return x
    h = x.shape[-1]
    to_grid = scale_matrix(h / crop_size, h / crop_size)
    m = compose(to_grid, compose(rel, invert_affine(to_grid)))
    dtype = x.dtype
    return warp(x.float(), m, x.shape[-2], x.shape[-1], mode="bilinear", padding="border",
                antialias=False).to(dtype)


@dataclass
class _TrackState:
    affine: np.ndarray
    lq: Optional[torch.Tensor] = None
    skips: dict = field(default_factory=dict)
    probs: Optional[torch.Tensor] = None
    out: Optional[torch.Tensor] = None


class TrackStates:
    """``states``: track id -> that track's latest state; tracks that ended are forgotten."""

    states: dict

    def reset(self) -> None:
        self.states.clear()

    def forget(self, keep_ids) -> None:
        keep = set(keep_ids)
        for tid in [t for t in self.states if t not in keep]:
            del self.states[tid]


class TemporalLookup(TrackStates):
    """Restore the faces of consecutive frames with a running, motion-compensated lookup state per track.

    strength: 0 = per-frame restoration (exactly ``lookup`` with mode off/trained); 0.6 keeps 60 % of the
        previous frame's (warped) latent and code probabilities.
    output_blend: the same for the final restored crop (all restorers; the only option without a codebook).
    """

    blend_skips = True         # the encoder skips are blended over time like the latent
    batch_size = 8             # faces per model call
    reset_similarity = 0.5     # a latent less similar than this to the track's last one starts the track afresh

    def __init__(self, restorer, lookup: LookupOptions, strength: float = 0.6, output_blend: Optional[float] = None):
        from ..lookup.lookup import resolve_mode
        self.restorer = restorer
        self.quality, self.fidelity = float(lookup.quality), float(lookup.fidelity)
        self.strength = float(strength)
        if not 0.0 <= self.strength < 1.0:
            raise ValueError(f"temporal strength must be within 0..1 (exclusive of 1), got {strength}")
        has_codebook = restorer.codebook is not None
        self.output_blend = float(output_blend if output_blend is not None else (0.0 if has_codebook else strength))
        run_mode, note = resolve_mode(restorer, lookup.mode or "auto", self.quality, critic=lambda x: x)
        self.note = note
        if run_mode == "training-free":
            # critic-steered codes are picked per frame by a search: they would bring the flicker back
            run_mode = "off"
            self.note = ("video mode: training-free quality steering is per frame, so it is off here; "
                         "use a restorer with trained quality conditioning for the slider")
        self.mode = run_mode
        self.states: dict[int, _TrackState] = {}


    def _prior(self, tid: int, affine: np.ndarray, crop_size: int, lq: Optional[torch.Tensor]):
        """The track's state and the relative affine, or None when the state must not be used."""
        st = self.states.get(tid)
        if st is None:
            return None, None
        if not is_small_motion(relative_affine(st.affine, affine), crop_size):
            return None, None   # a jump of the crop box (a cut, a detector swap): start afresh
        # the crops are aligned to the face's landmarks, so the face sits at the same place in consecutive
        # crops however the frame moved: the previous state is used as it is (identity warp)
        rel = IDENTITY
        if lq is not None and st.lq is not None:
            prev = warp_grid(st.lq, rel, crop_size)
            sim = F.cosine_similarity(prev.flatten().float(), lq.flatten().float(), dim=0)
            if float(sim) < self.reset_similarity:  # a cut or an occlusion: start the track afresh
                return None, None
        return st, rel

    def _blended_codes(self, model, lq: torch.Tensor, priors: list, news: list, size: int) -> torch.Tensor:
        """The quantized latent from code probabilities blended with each track's previous (warped) ones."""
        a = self.strength
        film = None
        if self.mode == "trained":
            film = model.film(torch.full((lq.shape[0],), self.quality, device=lq.device))
        probs = F.softmax(model.logits(lq, film).float(), dim=2)
        s = lq.shape[-1]                      # latent grid (fully convolutional models: crop / stride)
        groups = probs.shape[1] // (s * s)    # IQPFR: universal + HQ tokens
        for i, (st, rel) in enumerate(priors):
            if st is not None and st.probs is not None and a > 0:
                prev = st.probs.view(groups, s, s, -1).permute(0, 3, 1, 2)
                prev = warp_grid(prev, rel, size).permute(0, 2, 3, 1).reshape(1, groups * s * s, -1)
                probs[i:i + 1] = (1 - a) * probs[i:i + 1] + a * prev
            news[i].probs = probs[i:i + 1].clone()
        return model.finish_quantize(model.code_features(probs.argmax(dim=2)), lq)

    @torch.inference_mode()
    def __call__(self, face_crops: FaceCrops, track_ids: list[int]) -> FaceCrops:
        """Restore the faces (in frame order; ``track_ids[i]`` is the track of face i)."""
        from ..lookup.input_detail import carry_detail
        from ..lookup.lookup import to_model
        n = len(face_crops)
        if n == 0:
            return face_crops
        if len(track_ids) != n:
            raise ValueError(f"{n} faces but {len(track_ids)} track ids")
        r = self.restorer
        size = face_crops.crop_size
        affines = [f.affine for f in face_crops.faces]
        a = self.strength
        model_size = r.model_size(size)
        priors: list = []   # (previous state or None, relative affine) of each face
        news: list = []     # the state each face leaves for the next frame of its track
        with r.autocast():
            if r.codebook is None:
                outs = [r.run_whole(to_model(face_crops.crops[i:i + self.batch_size], model_size, r.device)).float()
                        for i in range(0, n, self.batch_size)]
                restored = torch.cat(outs)
                for tid, aff in zip(track_ids, affines):
                    priors.append(self._prior(tid, aff, size, None))
                    news.append(_TrackState(aff))
                    self.states[tid] = news[-1]
            else:
                model = r.codebook
                lqs, skips = [], []
                for i in range(0, n, self.batch_size):
                    x = to_model(face_crops.crops[i:i + self.batch_size], model_size, r.device)
                    lq_b, sk_b = model.encode(x * 2 - 1)
                    lqs.append(lq_b)
                    skips.append(sk_b)
                lq = torch.cat(lqs)
                sk = {k: torch.cat([s_[k] for s_ in skips]) for k in skips[0]}
                # 1. running encoder latent (and skips), in frame order
                for i, (tid, aff) in enumerate(zip(track_ids, affines)):
                    st, rel = self._prior(tid, aff, size, lq[i:i + 1])
                    priors.append((st, rel))
                    if st is not None and a > 0:
                        lq[i:i + 1] = (1 - a) * lq[i:i + 1] + a * warp_grid(st.lq, rel, size)
                        if self.blend_skips:
                            for k in sk:
                                if k in st.skips:
                                    sk[k][i:i + 1] = (1 - a) * sk[k][i:i + 1] + a * warp_grid(st.skips[k], rel, size)
                    news.append(_TrackState(aff, lq[i:i + 1].clone(),
                                            {k: v[i:i + 1].clone() for k, v in sk.items()} if self.blend_skips else {}))
                    self.states[tid] = news[-1]  # a later face of the same track in this batch reads it
                # 2. code probabilities from the blended latents, blended again over time
                quantized = self._blended_codes(model, lq, priors, news, size)
                outs = []
                for i in range(0, n, self.batch_size):
                    skb = {k: v[i:i + self.batch_size] for k, v in sk.items()}
                    outs.append(((model.decode(quantized[i:i + self.batch_size], skb, self.fidelity).float() + 1)
                                 / 2).clamp(0, 1))
                restored = torch.cat(outs)
        restored = carry_detail(restored.float().clamp(0, 1).to(face_crops.crops.device), face_crops.crops, model_size,
                                self.fidelity)
        if restored.shape[-1] != size:
            restored = F.interpolate(restored, size=(size, size), mode="bicubic", align_corners=False,
                                     antialias=True).clamp(0, 1)
        b = self.output_blend
        for i, (st, rel) in enumerate(priors):
            if b > 0 and st is not None and st.out is not None:
                restored[i:i + 1] = (1 - b) * restored[i:i + 1] + b * warp_grid(st.out, rel, size)
            news[i].out = restored[i:i + 1].clone() if b > 0 else None
        step = f"lookup:{r.architecture}:{self.mode}:temporal{self.strength:g}"
        return face_crops.with_crops(restored, step)


class TrackColor:
    """Paste-back colour correction with running statistics per track (no per-frame colour pumping).

    mode 'lab': Reinhard mean/std transfer in CIE-LAB, as core.paste.color.lab_transfer, towards the
    original face's means and deviations averaged over the track.
    mode 'lowfreq': the restored details on the original's low frequencies averaged over the track.
    momentum: weight of the running value (0 = per frame).
    """

    def __init__(self, mode: str = "lab", momentum: float = 0.8):
        from ..paste.options import COLOR_MODES
        if mode not in COLOR_MODES:
            raise ValueError(f"colour correction must be one of {COLOR_MODES}, got '{mode}'")
        self.mode, self.momentum = mode, float(momentum)
        self.states: dict[int, tuple] = {}

    def reset(self) -> None:
        self.states.clear()

    def _ema(self, tid: int, values: tuple) -> tuple:
        old = self.states.get(tid)
        m = self.momentum
        if old is not None and m > 0:
            values = tuple(m * p + (1 - m) * v for p, v in zip(old[1], values))
        return values

    @torch.inference_mode()
    def __call__(self, restored: FaceCrops, original: torch.Tensor, masks: torch.Tensor,
                 track_ids: list[int]) -> FaceCrops:
        """restored: FACE_CROPS; original: the input crops [N,3,S,S]; masks [N,S,S] soft paste masks."""
        from kornia.color import lab_to_rgb, rgb_to_lab

        from ..paste.color import masked_stats, smooth
        if self.mode == "none" or len(restored) == 0:
            return restored
        size = restored.crop_size
        out = []
        for i, tid in enumerate(track_ids):
            face = restored.faces[i]
            old = self.states.get(tid)
            if old is not None and not is_small_motion(relative_affine(old[0], face.affine), size):
                self.states.pop(tid)   # a jump: the colour target starts afresh
            x = restored.crops[i:i + 1].float().clamp(0, 1)
            o = original[i:i + 1].float().clamp(0, 1)
            w = masks[i:i + 1, None].float()
            # the restored face is normalised with its own statistics (its colour cast is removed every
            # frame); the target, the original face's statistics, is averaged over the track
            if self.mode == "lab":
                pw = F.avg_pool2d(w, 4)
                mean_r, std_r = masked_stats(rgb_to_lab(F.avg_pool2d(x, 4)), pw)
                mean_o, std_o = masked_stats(rgb_to_lab(F.avg_pool2d(o, 4)), pw)
                mean_o, std_o = self._ema(tid, (mean_o, std_o))
                self.states[tid] = (face.affine, (mean_o, std_o))
                lab = (rgb_to_lab(x) - mean_r) * (std_o / std_r).clamp(0.5, 2.0) + mean_o
                out.append(lab_to_rgb(lab, clip=True))
            else:
                sigma = size / 64.0
                hard = (w > 0.01).float()
                norm = smooth(hard, sigma).clamp(min=1e-4)
                low_o = smooth(o * hard, sigma) / norm
                (low_o,) = self._ema(tid, (low_o,))
                self.states[tid] = (face.affine, (low_o,))
                out.append((x - smooth(x * hard, sigma) / norm + low_o).clamp(0, 1))
        corrected = torch.cat(out)
        return FaceCrops(corrected, restored.faces, restored.crop_size, restored.parsing_masks,
                         restored.history + (f"color:{self.mode}:track",))
