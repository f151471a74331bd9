"""Temporally consistent restoration (core.video.temporal) with a small random-initialised IQPFR model."""
import numpy as np
import pytest
import torch

from facerefine.core.types import FaceCrops, FaceInfo
from facerefine.core.crop.warp import invert_affine
from facerefine.core.lookup.options import LookupOptions

OFF = LookupOptions(quality=1.0, fidelity=0.5, mode="off")  # per-frame lookup, no quality slider

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_restorer(tmp_path_factory):
    from facerefine.models.restorers import load_restorer
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
    # video frames take no exemplar detail (core/video/restore.py): compare with the lookup without it
    per_frame, _ = lookup(crops, tiny_restorer, LookupOptions(quality=1.0, fidelity=0.5, mode="off",
                                                              exemplar_detail=0.0))
    ours = TemporalLookup(tiny_restorer, OFF, strength=0.0)(crops, [0] * len(crops))
    assert torch.allclose(ours.crops, per_frame.crops, atol=1e-5)


def test_temporal_lookup_lowers_flicker(tiny_restorer, clip):
    from facerefine.core.video import TemporalLookup
    from facerefine.lab.eval.flicker import crops_flicker
    crops = _crops(clip)
    ids = [0] * len(crops)
    per_frame = TemporalLookup(tiny_restorer, OFF, strength=0.0)(crops, ids)
    temporal = TemporalLookup(tiny_restorer, OFF, strength=0.7)
    # fed in two chunks: the state carries across calls
    half = len(crops) // 2
    a = temporal(crops.select(list(range(half))), ids[:half])
    b = temporal(crops.select(list(range(half, len(crops)))), ids[half:])
    steady = torch.cat([a.crops, b.crops])
    f_frame, f_temp = crops_flicker(per_frame.crops), crops_flicker(steady)
    assert f_temp < 0.7 * f_frame, (f_temp, f_frame)
    # one call over the whole clip gives the same result as two chunks
    whole = TemporalLookup(tiny_restorer, OFF, strength=0.7)(crops, ids)
    assert torch.allclose(whole.crops, steady, atol=1e-5)
    # another track id does not inherit the state
    other = TemporalLookup(tiny_restorer, OFF, strength=0.7)(crops.select([0, 1]), [0, 1])
    assert torch.allclose(other.crops, per_frame.crops[:2], atol=1e-5)


def test_cut_resets_the_track_state(tiny_restorer, clip):
    from facerefine.core.video import TemporalLookup
    crops = _crops(clip)
    t = TemporalLookup(tiny_restorer, OFF, strength=0.7)
    t(crops.select([0]), [0])
    flipped = FaceCrops(crops.crops[1:2].flip(-2), crops.faces[1:2], crops.crop_size)   # a different picture
    out = t(flipped, [0])
    alone = TemporalLookup(tiny_restorer, OFF, strength=0.0)(flipped, [0])
    assert torch.allclose(out.crops, alone.crops, atol=1e-5)


def test_track_colour_is_steadier_than_per_frame(clip):
    from facerefine.core.paste.options import PasteOptions
    from facerefine.core.paste.step import face_masks
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


@pytest.mark.parametrize("mode", ["flow", "latent"])
def test_sequence_restorer_chunks_equal_one_pass(tiny_restorer, clip, tmp_path, mode):
    """Planned tracks (no detector): 3 chunks of 4 frames give the same frames as one chunk of 12."""
    from facerefine.core.pipeline import RestoreOptions
    from facerefine.core.video import SequenceRestorer, TrackedFace, VideoOptions
    frames = clip[0].degraded
    planned = [[TrackedFace(0, clip[0].landmarks[t], (0, 0, 1, 1), 1.0, True, 0)] for t in range(len(frames))]
    options = RestoreOptions.from_values(restorer="tiny", crop_size=256, device="cpu")
    outs = []
    for chunk in (4, 12):
        seq = SequenceRestorer(options, VideoOptions(chunk=chunk, temporal=0.6, temporal_mode=mode),
                               restorer=tiny_restorer, planned=planned)
        assert (seq.flow is not None) == (mode == "flow") and seq.temporal.strength == (0.6 if mode == "latent" else 0)
        outs.append(torch.cat([seq.process(frames[i:i + chunk]).images for i in range(0, len(frames), chunk)]))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    assert (outs[0] - frames).abs().max() > 0.01   # faces really were restored and pasted


# --- motion-compensated blend of restored crops (core.video.flow) ---

def _lagging_crops(clip_and_marks, size=128, lag_px=3.0):
    """Crops through the true alignment shifted by a smooth per-frame offset (landmarks that lag the face),
    plus the shifts, so outputs can be brought back to the true alignment."""
    from facerefine.core.crop.align import crop_one
    from facerefine.core.crop.warp import compose
    from facerefine.lab.video_clip import true_crop_affines
    clip, marks = clip_and_marks
    true = true_crop_affines(clip, marks, size)
    t = np.arange(len(true))
    shifts = np.stack([lag_px * np.sin(0.9 * t), lag_px * np.cos(0.6 * t + 1.0)], axis=1)
    lag = [np.array([[1.0, 0, dx], [0, 1.0, dy]]) for dx, dy in shifts]
    affs = [compose(s, a) for s, a in zip(lag, true)]
    crops = torch.stack([crop_one(f, a, size) for f, a in zip(clip.degraded, affs)])
    clean = torch.stack([crop_one(f, a, size) for f, a in zip(clip.clean, true)])
    faces = tuple(FaceInfo(affine=a, inverse_affine=invert_affine(a), landmarks=m, bbox=(0, 0, 1, 1), score=1.0,
                           image_index=k, image_size=tuple(clip.degraded.shape[1:3]))
                  for k, (a, m) in enumerate(zip(affs, clip.landmarks)))
    return FaceCrops(crops, faces, size), clean, lag


def _realigned(crops, lag):
    """Output crops taken back to the true alignment (undo each frame's lag shift)."""
    from facerefine.core.crop.warp import warp
    size = crops.shape[-1]
    return torch.cat([warp(c[None], invert_affine(s), size, size, mode="bilinear", padding="border")
                      for c, s in zip(crops, lag)])


def _psnr(a, b, mask):
    mse = (((a - b) ** 2).mean(dim=1) * mask).sum(dim=(1, 2)) / mask.sum()
    return float((10 * torch.log10(1.0 / mse)).mean())


def test_flow_blend_registers_the_previous_frame(clip):
    """With crops that lag the face by a few pixels, the flow blend (of a restorer that changes nothing, i.e.
    the noisy crops) lowers the flicker and keeps the face PSNR, while the same blend without registration
    smears the face and loses PSNR."""
    from facerefine.core.video.flow import FlowBlend
    from facerefine.lab.eval.flicker import crops_flicker, face_region
    crops, clean, lag = _lagging_crops(clip)
    ids = [0] * len(crops)
    mask = face_region(crops.crop_size)
    blend = FlowBlend(strength=0.6)
    half = len(crops) // 2       # two calls: the state carries across chunks
    flow = torch.cat([blend(crops.select(list(range(half))), crops.crops[:half], ids[:half]).crops,
                      blend(crops.select(list(range(half, len(crops)))), crops.crops[half:], ids[half:]).crops])
    unwarped = [crops.crops[0]]
    for c in crops.crops[1:]:
        unwarped.append(0.4 * c + 0.6 * unwarped[-1])
    unwarped = torch.stack(unwarped)
    per_frame = _realigned(crops.crops, lag)
    f_frame, f_flow = crops_flicker(per_frame, mask), crops_flicker(_realigned(flow, lag), mask)
    p_frame, p_flow = _psnr(per_frame, clean, mask), _psnr(_realigned(flow, lag), clean, mask)
    p_unwarped = _psnr(_realigned(unwarped, lag), clean, mask)
    assert f_flow < 0.7 * f_frame, (f_flow, f_frame)
    assert p_flow > p_frame - 0.3, (p_flow, p_frame)
    assert p_unwarped < p_flow - 0.3, (p_unwarped, p_flow)
    assert min(blend.last_confidence[1:]) > 0.3
    # the first frame has nothing to blend with; another track id does not inherit the state
    assert torch.allclose(flow[0], crops.crops[0], atol=1e-6)
    other = FlowBlend(strength=0.6)(crops.select([0, 1]), crops.crops[:2], [0, 1])
    assert torch.allclose(other.crops, crops.crops[:2], atol=1e-6)


def test_flow_blend_resets_on_a_cut_and_spares_an_occlusion(clip):
    from facerefine.core.video.flow import FlowBlend
    crops, _, _ = _lagging_crops(clip)
    size = crops.crop_size
    blend = FlowBlend(strength=0.6)
    blend(crops.select([0]), crops.crops[:1], [0])
    # a cut: another picture in the same crop box -> the current frame alone
    other = crops.crops[1:2].flip(-2).roll(size // 3, dims=-1)
    cut = FaceCrops(other, crops.faces[1:2], size)
    out = blend(cut, other, [0])
    assert torch.allclose(out.crops, other, atol=1e-6), blend.last_confidence
    # an occlusion in the next frame: the hidden half takes the current frame, the rest is still blended
    blend = FlowBlend(strength=0.6)
    blend(crops.select([0]), crops.crops[:1], [0])
    occluded = crops.crops[1:2].clone()
    occluded[..., :, : size // 2] = 0.2
    out = blend(FaceCrops(occluded, crops.faces[1:2], size), occluded, [0]).crops
    hidden = (out - occluded)[..., 8:-8, 8: size // 2 - 12].abs().mean()
    seen = (out - occluded)[..., 8:-8, size // 2 + 12: -8].abs().mean()
    assert hidden < 0.005 and seen > 2 * hidden, (float(hidden), float(seen))


def test_video_options_reject_an_unknown_mode():
    from facerefine.core.video import VideoOptions
    from facerefine.errors import FaceRefineError
    with pytest.raises(FaceRefineError, match="temporal_mode"):
        VideoOptions(temporal_mode="optical")
    with pytest.raises(FaceRefineError, match="flow_tolerance"):
        VideoOptions(flow_tolerance=0)
