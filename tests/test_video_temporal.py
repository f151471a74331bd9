"""Temporally consistent restoration (core.video.temporal) with a small random-initialised IQPFR model."""
import numpy as np
import pytest
import torch

from facerefine.core.types import FaceCrops, FaceInfo
from facerefine.core.crop.warp import invert_affine

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_restorer(tmp_path_factory):
    from facerefine.core.lookup.restorer import load_restorer
    from facerefine.lab.tiny_models import make_tiny_iqpfr
    path = make_tiny_iqpfr(tmp_path_factory.mktemp("tiny") / "tiny_iqpfr.safetensors")
    return load_restorer(str(path), "cpu")


@pytest.fixture(scope="module")
def clip():
    from conftest import SHARED_DATA
    from facerefine.lab.video_clip import load_photo, make_clip, reference_landmarks
    files = sorted((SHARED_DATA / "london" / "neutral").glob("*.jpg"))
    if not files:
        pytest.skip("../shared/data/london not present")
    photo = load_photo(files[0], 320)
    marks = reference_landmarks(photo)
    return make_clip(photo, marks, frames=12, frame_size=160, zoom=1.4, noise=12 / 255, jpeg_quality=35), marks


def _crops(clip_and_marks, size=128):
    """FACE_CROPS of the clip's frames through the true alignment (no detector needed)."""
    from facerefine.core.crop.align import crop_one
    from facerefine.lab.video_clip import true_crop_affines
    clip, marks = clip_and_marks
    affs = true_crop_affines(clip, marks, size)
    crops = torch.stack([crop_one(f, a, size) for f, a in zip(clip.degraded, affs)])
    faces = tuple(FaceInfo(affine=a, inverse_affine=invert_affine(a), landmarks=m, bbox=(0, 0, 1, 1), score=1.0,
                           image_index=t, image_size=tuple(clip.degraded.shape[1:3]))
                  for t, (a, m) in enumerate(zip(affs, clip.landmarks)))
    return FaceCrops(crops, faces, size)


def test_strength_zero_is_per_frame_lookup(tiny_restorer, clip):
    from facerefine.core.lookup.lookup import lookup
    from facerefine.core.video import TemporalLookup
    crops = _crops(clip)
    per_frame, _ = lookup(crops, tiny_restorer, quality=1.0, fidelity=0.5, mode="off")
    ours = TemporalLookup(tiny_restorer, 1.0, 0.5, strength=0.0, mode="off")(crops, [0] * len(crops))
    assert torch.allclose(ours.crops, per_frame.crops, atol=1e-5)


def test_temporal_lookup_lowers_flicker(tiny_restorer, clip):
    from facerefine.core.video import TemporalLookup
    from facerefine.lab.eval.flicker import crops_flicker
    crops = _crops(clip)
    ids = [0] * len(crops)
    per_frame = TemporalLookup(tiny_restorer, 1.0, 0.5, strength=0.0, mode="off")(crops, ids)
    temporal = TemporalLookup(tiny_restorer, 1.0, 0.5, strength=0.7, mode="off")
    # fed in two chunks: the state carries across calls
    half = len(crops) // 2
    a = temporal(crops.select(list(range(half))), ids[:half])
    b = temporal(crops.select(list(range(half, len(crops)))), ids[half:])
    steady = torch.cat([a.crops, b.crops])
    f_frame, f_temp = crops_flicker(per_frame.crops), crops_flicker(steady)
    assert f_temp < 0.7 * f_frame, (f_temp, f_frame)
    # one call over the whole clip gives the same result as two chunks
    whole = TemporalLookup(tiny_restorer, 1.0, 0.5, strength=0.7, mode="off")(crops, ids)
    assert torch.allclose(whole.crops, steady, atol=1e-5)
    # another track id does not inherit the state
    other = TemporalLookup(tiny_restorer, 1.0, 0.5, strength=0.7, mode="off")(crops.select([0, 1]), [0, 1])
    assert torch.allclose(other.crops, per_frame.crops[:2], atol=1e-5)


def test_cut_resets_the_track_state(tiny_restorer, clip):
    from facerefine.core.video import TemporalLookup
    crops = _crops(clip)
    t = TemporalLookup(tiny_restorer, 1.0, 0.5, strength=0.7, mode="off")
    t(crops.select([0]), [0])
    flipped = FaceCrops(crops.crops[1:2].flip(-2), crops.faces[1:2], crops.crop_size)   # a different picture
    out = t(flipped, [0])
    alone = TemporalLookup(tiny_restorer, 1.0, 0.5, strength=0.0, mode="off")(flipped, [0])
    assert torch.allclose(out.crops, alone.crops, atol=1e-5)


def test_track_colour_is_steadier_than_per_frame(clip):
    from facerefine.core.paste import PasteOptions, face_masks
    from facerefine.core.video import TrackColor
    crops = _crops(clip)
    gen = torch.Generator().manual_seed(0)
    # a "restorer" whose colour cast changes every frame
    cast = 0.08 * torch.randn(len(crops), 3, 1, 1, generator=gen)
    restored = crops.with_crops((crops.crops + cast).clamp(0, 1), "test")
    masks = face_masks(restored, PasteOptions(mask="landmarks"))
    per_frame = TrackColor("lab", momentum=0.0)(restored, crops.crops, masks, [0] * len(crops))
    tracked = TrackColor("lab", momentum=0.8)(restored, crops.crops, masks, [0] * len(crops))
    w = masks[:, None]

    def mean_colour(x):
        return ((x * w).sum(dim=(2, 3)) / w.sum(dim=(2, 3)))

    # both pull the colour back to the original; the tracked one changes less from frame to frame
    orig = mean_colour(crops.crops)
    assert (mean_colour(tracked.crops) - orig).abs().mean() < (mean_colour(restored.crops) - orig).abs().mean()
    step = lambda x: (mean_colour(x)[1:] - mean_colour(x)[:-1]).abs().mean()  # noqa: E731
    assert step(tracked.crops) <= step(per_frame.crops) + 1e-4


def test_sequence_restorer_chunks_equal_one_pass(tiny_restorer, clip, tmp_path):
    """Planned tracks (no detector): 3 chunks of 4 frames give the same frames as one chunk of 12."""
    from facerefine.core.pipeline import RestoreOptions
    from facerefine.core.video import SequenceRestorer, TrackedFace, VideoOptions
    frames = clip[0].degraded
    planned = [[TrackedFace(0, clip[0].landmarks[t], (0, 0, 1, 1), 1.0, True, 0)] for t in range(len(frames))]
    options = RestoreOptions.from_values(restorer="tiny", crop_size=256, device="cpu")
    outs = []
    for chunk in (4, 12):
        seq = SequenceRestorer(options, VideoOptions(chunk=chunk, temporal=0.6), restorer=tiny_restorer,
                               planned=planned)
        outs.append(torch.cat([seq.process(frames[i:i + chunk]).images for i in range(0, len(frames), chunk)]))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    assert (outs[0] - frames).abs().max() > 0.01   # faces really were restored and pasted
