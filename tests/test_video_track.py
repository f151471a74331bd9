"""Face tracks across frames (core.video.track): identity kept through drop-outs and crossing faces."""
import numpy as np
import pytest
import torch

from facerefine.core.video import FaceTracker, TrackOptions, appearance_embedding


def _face(cx, cy, size=80.0):
    """5 landmarks of an upright face centred at (cx, cy)."""
    t = np.array([[-0.25, -0.15], [0.25, -0.15], [0.0, 0.05], [-0.2, 0.3], [0.2, 0.3]])
    return t * size + (cx, cy)


def _box(marks, size=80.0):
    c = marks.mean(0)
    return np.array([c[0] - size / 2, c[1] - size / 2, c[0] + size / 2, c[1] + size / 2])


def _run(tracker, frames):
    """frames: list of lists of (person, marks, embedding). Returns {person: [track ids per frame seen]}."""
    seen = {}
    for dets in frames:
        marks = np.array([m for _, m, _ in dets]).reshape(-1, 5, 2)
        boxes = np.array([_box(m) for _, m, _ in dets]).reshape(-1, 4)
        embs = np.array([e for _, _, e in dets]) if dets else None
        out = tracker.update(marks, boxes, embeddings=embs)
        for f in out:
            if f.detected:
                person = dets[f.detection_index][0]
                seen.setdefault(person, []).append(f.track_id)
    return seen


def test_crossing_faces_and_dropout_keep_identity():
    rng = np.random.default_rng(0)
    ident = {p: v / np.linalg.norm(v) for p, v in ((p, rng.normal(size=64)) for p in "AB")}
    frames = []
    n = 30
    for t in range(n):
        xa, xb = 60 + t * 12.0, 60 + (n - 1 - t) * 12.0   # A left->right, B right->left: they cross mid-clip
        dets = []
        for person, x, y in (("A", xa, 200.0), ("B", xb, 215.0)):
            if person == "A" and t in (13, 14):        # a 2-frame detector drop-out right at the crossing
                continue
            emb = ident[person] + rng.normal(scale=0.25, size=64) / 8
            dets.append((person, _face(x, y) + rng.normal(scale=1.0, size=(5, 2)), emb / np.linalg.norm(emb)))
        frames.append(dets)
    seen = _run(FaceTracker(), frames)
    assert len(set(seen["A"])) == 1 and len(set(seen["B"])) == 1, seen
    assert seen["A"][0] != seen["B"][0]
    assert len(seen["A"]) == n - 2 and len(seen["B"]) == n


def test_dropout_is_carried_then_resumed_on_the_same_track():
    tracker = FaceTracker(TrackOptions(max_carry=2))
    outputs = []
    for t in range(10):
        marks = _face(100 + 5 * t, 120)
        if t in (4, 5):
            outputs.append(tracker.update(np.zeros((0, 5, 2)), np.zeros((0, 4))))
        else:
            outputs.append(tracker.update(marks[None], _box(marks)[None]))
    ids = {f.track_id for out in outputs for f in out}
    assert ids == {0}
    carried = [out[0] for out in outputs[4:6]]
    assert all(not f.detected for f in carried)
    # the carried face follows the motion (constant velocity), not the last seen position
    for k, f in enumerate(carried):
        expected = _face(100 + 5 * (4 + k), 120)
        assert np.abs(f.landmarks - expected).max() < 3.0
    assert outputs[6][0].detected and outputs[6][0].track_id == 0


def test_identity_gate_refuses_a_stranger_at_the_same_place():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=32), rng.normal(size=32)
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    tracker = FaceTracker()
    m = _face(100, 100)
    first = tracker.update(m[None], _box(m)[None], embeddings=a[None])
    second = tracker.update(m[None], _box(m)[None], embeddings=b[None])  # same place, another person
    assert first[0].track_id == 0
    assert {f.track_id for f in second if f.detected} == {1}


def test_appearance_embedding_tells_people_apart(london_dir):
    from facerefine.core.crop.options import CropOptions
    from facerefine.core.crop.step import crop_faces
    from facerefine.lab.video_clip import load_photo
    files = sorted((london_dir / "neutral").glob("*.jpg"))[:2]
    photos = [load_photo(f, 256) for f in files]
    crops = crop_faces(torch.stack(photos), CropOptions(detector="mtcnn", crop_size=256, max_faces=1)).crops
    noisy = (crops + 0.05 * torch.randn(crops.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    e, en = appearance_embedding(crops), appearance_embedding(noisy)
    same = (e * en).sum(1)
    cross = (e[0] * en[1]).sum()
    assert same.min() > 0.9 and cross < same.min() - 0.1


@pytest.mark.slow
def test_real_faces_crossing_with_dropout(london_dir):
    """Two London faces pass each other (one above the other); one is hidden for 2 frames mid-crossing."""
    from facerefine.core.pipeline import RestoreOptions
    from facerefine.core.video import SequenceRestorer, VideoOptions
    from facerefine.lab.video_clip import load_photo, make_crossing, reference_landmarks
    torch.set_num_threads(1)
    files = sorted((london_dir / "neutral").glob("*.jpg"))[:2]
    photos = [load_photo(f, 256) for f in files]
    marks = [reference_landmarks(p) for p in photos]
    frames = 14
    clip = make_crossing(photos[0], marks[0], photos[1], marks[1], frames=frames, height=240, width=480,
                         face_frac=0.48, vertical_gap=0.5, hide={0: [6, 7]})
    seq = SequenceRestorer(RestoreOptions.from_values(restorer="none", detector="mtcnn"),
                           VideoOptions(chunk=7, smooth=False))
    tracks = seq.track(clip.frames[:7]) + seq.track(clip.frames[7:])
    owner = {}
    for t, faces in enumerate(tracks):
        for f in faces:
            if not f.detected:
                continue
            d = [np.linalg.norm(f.landmarks - clip.landmarks[t, p], axis=1).mean() for p in (0, 1)]
            person = int(np.argmin(d))
            assert d[person] < 6.0, (t, d)
            owner.setdefault(f.track_id, set()).add(person)
    assert all(len(p) == 1 for p in owner.values()), owner   # no track ever switches person
    assert len(owner) == 2                                    # person 0 resumes its own track after the gap
    carried = [f for t in (6, 7) for f in tracks[t] if not f.detected]
    assert carried, "the hidden face is carried through the drop-out"
