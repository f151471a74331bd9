"""Landmark smoothing (core.video.smooth): the One-Euro filter lowers jitter without losing the face."""
import numpy as np
import pytest
import torch

from facerefine.core.video import OneEuroFilter, SmoothOptions, jitter, smooth_sequence
from facerefine.core.video.smooth import drift


def test_one_euro_removes_noise_at_rest_and_follows_a_move():
    rng = np.random.default_rng(0)
    base = np.array([[100.0, 100.0], [140.0, 100.0], [120.0, 120.0], [105.0, 140.0], [135.0, 140.0]])
    n = 60
    truth = np.stack([base + (0.0 if t < 30 else 3.0 * (t - 30)) for t in range(n)])  # rest, then a fast move
    noisy = truth + rng.normal(scale=1.5, size=truth.shape)
    out = smooth_sequence(noisy, SmoothOptions(), scale=np.full(n, 80.0))
    rest = slice(5, 30)
    assert jitter(out[rest], truth[rest]) < 0.35 * jitter(noisy[rest], truth[rest])
    # while moving at 3 px/frame the filter opens up: the lag stays a few pixels, not the whole path
    assert np.abs(out[-1] - truth[-1]).mean() < 6.0
    zero_phase = smooth_sequence(noisy, SmoothOptions(), lookahead=True, scale=np.full(n, 80.0))
    assert drift(zero_phase[35:55], truth[35:55]) < drift(out[35:55], truth[35:55])


def test_filter_is_causal_and_resettable():
    f = OneEuroFilter(SmoothOptions(fps=30))
    a = [f(np.array([float(v), 0.0])) for v in (0, 1, 2, 3)]
    g = OneEuroFilter(SmoothOptions(fps=30))
    b = [g(np.array([float(v), 0.0])) for v in (0, 1, 2, 3, 100)]
    assert all(np.allclose(x, y) for x, y in zip(a, b[:4]))   # a later sample never changes an earlier output
    f.reset()
    assert np.allclose(f(np.array([7.0, 7.0])), [7.0, 7.0])
    with pytest.raises(ValueError):
        SmoothOptions(min_cutoff=0)


@pytest.mark.slow
def test_smoothing_lowers_landmark_jitter_on_the_synthetic_clip(london_dir):
    """Real detector (MTCNN) on a London face moved along a smooth random path with per-frame noise + JPEG."""
    from facerefine.core.pipeline import RestoreOptions
    from facerefine.core.video import SequenceRestorer, VideoOptions, smooth_planned
    from facerefine.lab.video_clip import load_photo, make_clip, reference_landmarks
    torch.set_num_threads(1)
    photo = load_photo(sorted((london_dir / "neutral").glob("*.jpg"))[0], 384)
    marks = reference_landmarks(photo)
    clip = make_clip(photo, marks, frames=40, frame_size=256, seed=0, zoom=1.4)
    options = RestoreOptions.from_values(restorer="none", detector="mtcnn")
    seq = SequenceRestorer(options, VideoOptions(smooth=False))
    raw = []
    for i in range(0, 40, 10):
        raw += seq.track(clip.degraded[i:i + 10])
    assert all(len(f) == 1 for f in raw)
    raw_marks = np.stack([f[0].landmarks for f in raw])
    causal = smooth_planned(raw, SmoothOptions(fps=25), lookahead=False)
    offline = smooth_planned(raw, SmoothOptions(fps=25), lookahead=True)
    causal_marks = np.stack([f[0].landmarks for f in causal])
    offline_marks = np.stack([f[0].landmarks for f in offline])
    j_raw = jitter(raw_marks, clip.landmarks)
    assert jitter(causal_marks, clip.landmarks) < 0.8 * j_raw
    assert jitter(offline_marks, clip.landmarks) < 0.8 * j_raw
    # the smoothed landmarks stay on the face (lag of a causal filter is bounded)
    assert drift(offline_marks, clip.landmarks) < 2.0 and drift(causal_marks, clip.landmarks) < 4.0
