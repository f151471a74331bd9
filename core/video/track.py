"""Face tracks across frames: "face 0" stays the same person in every frame.

Detections of each new frame are matched to the existing tracks with the Hungarian algorithm
(scipy) on a cost that mixes

- position: distance between the detection's landmarks and the track's constant-velocity
  prediction, in face sizes, and
- identity: 1 - cosine similarity of an identity embedding (an ArcFace-style network when you
  pass one, else ``appearance_embedding``, a small normalised thumbnail of the aligned face).

A pair is only allowed when both the position and the identity gates pass. A track missed by the
detector is carried for up to ``max_carry`` frames at its predicted position (so the face is still
restored in those frames) and dropped after ``max_missed``. When two faces cross, the velocity
prediction keeps their paths apart and the identity term decides when they overlap.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

EmbedFn = Callable[[torch.Tensor], torch.Tensor]  # aligned crops [N,3,S,S] 0..1 -> [N,D]


def appearance_embedding(crops: torch.Tensor, size: int = 16) -> torch.Tensor:
    """A cheap identity signature of aligned faces: the inner face as a 16x16 RGB thumbnail, zero-mean and
    unit-norm per face (robust to brightness/contrast changes and small misalignment). [N,3,S,S] -> [N,3*16*16]."""
    if crops.shape[0] == 0:
        return torch.zeros(0, 3 * size * size)
    s = crops.shape[-1]
    a, b = int(s * 0.2), int(s * 0.8)  # the inner face of the FFHQ framing (no background, little hair)
    x = F.interpolate(crops[:, :, a:b, a:b].float(), size=(size, size), mode="area").flatten(1)
    x = x - x.mean(dim=1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-6)


@dataclass
class TrackOptions:
    max_carry: int = 3             # frames a missed face is still output at its predicted position
    max_missed: int = 12           # frames before a missed track is dropped
    position_gate: float = 1.0     # max distance (face sizes) between prediction and detection
    min_similarity: float = 0.3    # min identity cosine for a match (ignored when embeddings are missing)
    identity_weight: float = 1.0   # weight of (1 - cosine) against the position term
    velocity_damping: float = 0.7  # velocity kept each frame (1 = constant velocity)
    embedding_momentum: float = 0.8  # running identity embedding of a track


@dataclass
class Track:
    track_id: int
    landmarks: np.ndarray                 # 5x2, last estimate (detected or predicted)
    box: np.ndarray                       # x0,y0,x1,y1
    velocity: np.ndarray = field(default_factory=lambda: np.zeros((5, 2)))
    embedding: Optional[np.ndarray] = None
    score: float = 1.0
    missed: int = 0
    hits: int = 1

    def predicted(self) -> tuple[np.ndarray, np.ndarray]:
        shift = self.velocity.mean(axis=0)
        return self.landmarks + self.velocity, self.box + np.tile(shift, 2)


@dataclass(frozen=True)
class TrackedFace:
    """One face of one frame, on its track."""

    track_id: int
    landmarks: np.ndarray      # 5x2 source pixels (raw detection, or the prediction when carried)
    box: tuple[float, float, float, float]
    score: float
    detected: bool             # False: carried through a detector miss
    detection_index: int = -1  # index in this frame's detections (-1 when carried)


def _size(landmarks: np.ndarray) -> float:
    from .smooth import face_scale
    return face_scale(landmarks)


class FaceTracker:
    """Stateful tracker; call ``update`` once per frame, in order."""

    def __init__(self, options: TrackOptions = TrackOptions()):
        self.options = options
        self.tracks: list[Track] = []
        self.next_id = 0
        self.frame = -1

    def reset(self) -> None:
        self.tracks, self.next_id, self.frame = [], 0, -1

    def cost_matrix(self, landmarks: np.ndarray, embeddings: Optional[np.ndarray]) -> np.ndarray:
        o = self.options
        cost = np.full((len(self.tracks), len(landmarks)), np.inf)
        for i, tr in enumerate(self.tracks):
            pred, _ = tr.predicted()
            scale = _size(pred)
            # uncertainty grows while a track is not seen
            gate = o.position_gate * (1.0 + 0.5 * tr.missed)
            for j, marks in enumerate(landmarks):
                dist = float(np.linalg.norm(marks - pred, axis=1).mean()) / scale
                if dist > gate:
                    continue
                c = dist
                if embeddings is not None and tr.embedding is not None:
                    sim = float(np.dot(tr.embedding, embeddings[j]))
                    if sim < o.min_similarity:
                        continue
                    c += o.identity_weight * (1.0 - sim)
                cost[i, j] = c
        return cost

    def update(self, landmarks: np.ndarray, boxes: np.ndarray, scores: Optional[np.ndarray] = None,
               embeddings: Optional[np.ndarray] = None) -> list[TrackedFace]:
        """Match this frame's detections (landmarks [N,5,2], boxes [N,4]) to tracks.

        Returns the faces to restore in this frame, sorted by track id: every detection (on an old or
        new track), plus the tracks carried through a miss of at most ``max_carry`` frames.
        """
        from scipy.optimize import linear_sum_assignment
        o = self.options
        self.frame += 1
        landmarks = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        n = len(landmarks)
        scores = np.ones(n) if scores is None else np.asarray(scores, dtype=np.float64)
        if embeddings is not None:
            embeddings = np.asarray(embeddings, dtype=np.float64).reshape(n, -1)
        pairs: list[tuple[int, int]] = []
        if self.tracks and n:
            cost = self.cost_matrix(landmarks, embeddings)
            finite = np.where(np.isfinite(cost), cost, 1e6)
            rows, cols = linear_sum_assignment(finite)
            pairs = [(r, c) for r, c in zip(rows, cols) if np.isfinite(cost[r, c])]
        matched_tracks = {r for r, _ in pairs}
        matched_dets = {c for _, c in pairs}
        out: list[TrackedFace] = []
        for r, c in pairs:
            tr = self.tracks[r]
            steps = tr.missed + 1
            new_v = (landmarks[c] - tr.landmarks) / steps
            tr.velocity = o.velocity_damping * new_v + (1 - o.velocity_damping) * tr.velocity
            tr.landmarks, tr.box, tr.score = landmarks[c].copy(), boxes[c].copy(), float(scores[c])
            tr.missed, tr.hits = 0, tr.hits + 1
            if embeddings is not None:
                e = embeddings[c] if tr.embedding is None else \
                    o.embedding_momentum * tr.embedding + (1 - o.embedding_momentum) * embeddings[c]
                tr.embedding = e / max(np.linalg.norm(e), 1e-9)
            out.append(TrackedFace(tr.track_id, tr.landmarks.copy(), tuple(map(float, tr.box)), tr.score, True, c))
        keep = []
        for i, tr in enumerate(self.tracks):
            if i not in matched_tracks:
                tr.landmarks, tr.box = tr.predicted()
                tr.velocity = tr.velocity * o.velocity_damping
                tr.missed += 1
                if tr.missed <= o.max_carry:
                    out.append(TrackedFace(tr.track_id, tr.landmarks.copy(), tuple(map(float, tr.box)), tr.score,
                                           False))
            if tr.missed <= o.max_missed:
                keep.append(tr)
        self.tracks = keep
        # new tracks, in the frame's detection order (the crop step's sort order: largest first by default)
        for j in range(n):
            if j in matched_dets:
                continue
            emb = None if embeddings is None else embeddings[j] / max(np.linalg.norm(embeddings[j]), 1e-9)
            tr = Track(self.next_id, landmarks[j].copy(), boxes[j].copy(), embedding=emb, score=float(scores[j]))
            self.next_id += 1
            self.tracks.append(tr)
            out.append(TrackedFace(tr.track_id, tr.landmarks.copy(), tuple(map(float, tr.box)), tr.score, True, j))
        return sorted(out, key=lambda f: f.track_id)
