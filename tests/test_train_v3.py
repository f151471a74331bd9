"""v3 training (lab/train/compact_v3.py): legs resume bit-for-bit, batches are deterministic, the losses see the face."""
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from facerefine.models.arch.iqpfr_v2 import IQPFRv2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_compact_v2 import TINY, shared_data  # noqa: E402,F401,F811  (the v2 tests' tiny model and fixture)


def tiny_config(tmp_path, **overrides):
    from facerefine.lab.train.compact_v3 import V3TrainConfig
    return V3TrainConfig(out_dir=str(tmp_path / "run"), sources=[["ffhq256", 256, 1.0]], patch=48, batch_size=4,
                         steps=4, warmup=1, checkpoint_every=2, threads=1, init=None, d_channels=8,
                         model={k: list(v) if isinstance(v, tuple) else v for k, v in TINY.__dict__.items()},
                         **overrides)


@pytest.mark.parametrize("overrides", [{}, {"feature_match_weight": 0.1, "gan_ramp": 3}], ids=["leg2", "leg5"])
def test_a_leg_resumes_bit_for_bit(tmp_path, shared_data, monkeypatch, overrides):
    from facerefine.lab.train import compact_v2 as train_v2
    from facerefine.lab.train import compact_v3 as train_v3
    real_paths = train_v2.source_paths
    monkeypatch.setattr(train_v2, "source_paths", lambda names: real_paths(names)[:16])
    straight = tiny_config(tmp_path / "a", **overrides)
    summary = train_v3.train(straight, log=lambda m: None)
    assert summary["step"] == 4
    resumed = tiny_config(tmp_path / "b", **overrides)
    train_v3.train(resumed, log=lambda m: None, stop_after=2)
    train_v3.train(resumed, log=lambda m: None)
    a = torch.load(Path(straight.out_dir) / "checkpoint.pt", weights_only=True)
    b = torch.load(Path(resumed.out_dir) / "checkpoint.pt", weights_only=True)
    for key in ("model", "ema", "disc"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)
    assert a["step"] == b["step"] == 4
    exported = train_v3.export(resumed)
    assert IQPFRv2.from_file(exported).config == IQPFRv2(resumed.model_config()).config


def test_batches_are_deterministic_and_half_are_whole_faces(tmp_path):
    from facerefine.lab.train import compact_v3 as train_v3
    cfg = tiny_config(tmp_path)
    pools = [(np.random.default_rng(0).integers(0, 255, (4, 256, 256, 3), dtype=np.uint8), 1.0)]
    degrade = train_v3.degrader(cfg)
    a, b = train_v3.make_batch(cfg, pools, 5, degrade), train_v3.make_batch(cfg, pools, 5, degrade)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], train_v3.make_batch(cfg, pools, 6, degrade)[0])
    lq, target, hq, quality, whole = a
    assert whole.tolist() == [True, True, False, False]
    assert bool((quality[whole] == 1).all())  # identity and components are asked of full-detail faces


def test_worker_processes_give_the_inline_batches(tmp_path):
    from facerefine.lab.train import compact_v3 as train_v3
    pools = [(np.random.default_rng(1).integers(0, 255, (3, 256, 256, 3), dtype=np.uint8), 1.0)]
    inline = list(train_v3.batches(tiny_config(tmp_path), pools, 2, 5))
    forked = list(train_v3.batches(tiny_config(tmp_path, workers=2), pools, 2, 5))
    assert len(inline) == len(forked) == 3
    for a, b in zip(inline, forked):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_component_boxes_sit_on_the_eyes_and_mouth():
    from facerefine.lab.train.compact_v3 import component_boxes, components
    from facerefine.models.arch.identity import FFHQ_TEMPLATE
    for size in (48, 160, 512):
        boxes = component_boxes(size)
        for name, point in (("eye_l", FFHQ_TEMPLATE[0]), ("eye_r", FFHQ_TEMPLATE[1]),
                            ("mouth", (FFHQ_TEMPLATE[3] + FFHQ_TEMPLATE[4]) / 2)):
            y0, y1, x0, x1 = boxes[name]
            x, y = (point * size).tolist()
            assert 0 <= x0 < x < x1 <= size and 0 <= y0 < y < y1 <= size, (size, name)
    eyes, mouths = components(torch.zeros(3, 3, 160, 160))
    assert eyes.shape[0] == 6 and mouths.shape[0] == 3


def test_identity_loss_is_zero_for_the_same_face_and_grows_with_damage(shared_data):
    from PIL import Image
    from facerefine.lab.train.compact_v3 import identity_loss
    from facerefine.models.arch.identity import load_dlib
    face = np.array(Image.open(sorted((shared_data / "ffhq256").glob("*"))[0]).convert("RGB").resize((160, 160)))
    hq = torch.from_numpy(face).permute(2, 0, 1)[None].float() / 127.5 - 1
    embedder = load_dlib()
    same = identity_loss(embedder, hq, hq)
    assert float(same[0]) < 1e-5 and float(same[1]) < 1e-5
    blurred = torch.nn.functional.avg_pool2d(hq, 9, 1, 4)
    worse = identity_loss(embedder, blurred, hq)
    assert float(worse[0]) > 0.05 and float(worse[1]) > 0.0


def test_3dsk_templates_give_the_pupils(tmp_path):
    """3DSK photos come with WebMorph .tem templates (count line, then "x y" per point; 0/1 = pupils)."""
    from facerefine.lab.train.data import london_sidecar, read_pupils
    photo = tmp_path / "someone.jpg"
    photo.write_bytes(b"")
    (tmp_path / "someone.tem").write_text("189\n496.9\t825.7\n853.0\t825.6\n497.3\t797.8\n")
    assert london_sidecar(photo) == tmp_path / "someone.tem"
    assert read_pupils(tmp_path / "someone.tem").tolist() == [[496.9, 825.7], [853.0, 825.6]]


def test_an_old_photos_tone_is_kept_in_the_target():
    from facerefine.lab.train.compact_v3 import tone_like
    rng = np.random.default_rng(0)
    hq = rng.uniform(0, 255, (32, 32, 3)).astype(np.float32)
    grey = np.repeat(hq.mean(axis=2, keepdims=True), 3, axis=2)
    toned = tone_like(hq, grey)
    assert np.abs(toned - toned[..., :1]).max() < 1e-3          # a grey photo's target is grey
    sepia = grey * np.array([1.1, 0.95, 0.7], np.float32)
    toned = tone_like(hq, sepia)
    assert toned[..., 0].mean() > toned[..., 1].mean() > toned[..., 2].mean()   # and a sepia one sepia


@pytest.mark.parametrize("spectral", [True, False])
def test_the_discriminators_learn_blur_from_sharp_at_the_leg_3_rate(spectral):
    import torch.nn.functional as F

    from facerefine.lab.train import compact_v3 as train_v3
    torch.manual_seed(0)
    sharp = torch.rand(8, 3, 64, 64) * 2 - 1
    blurred = F.avg_pool2d(F.pad(sharp, (1, 1, 1, 1), mode="replicate"), 3, 1)
    quality, whole = torch.ones(8), torch.zeros(8, dtype=torch.bool)
    disc = train_v3.Discriminators(8, spectral=spectral)
    opt = torch.optim.Adam(disc.parameters(), lr=1e-3, betas=(0.5, 0.99))
    start = float(train_v3.discriminator_loss(disc, blurred, sharp, quality, whole))
    for _ in range(40):
        loss = train_v3.discriminator_loss(disc, blurred, sharp, quality, whole)
        if not spectral:
            loss = loss + 0.01 * train_v3.r1_penalty(disc, sharp)
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = float(train_v3.discriminator_loss(disc, blurred, sharp, quality, whole))
    assert abs(start - 2 * math.log(2)) < 0.1 and end < 0.5 * start  # from chance to telling them apart
    assert float(train_v3.r1_penalty(disc, sharp)) > 0


def test_a_mixed_degrader_draws_v2s_chain_for_its_fraction(tmp_path):
    from facerefine.lab.train import compact_v2, compact_v3 as train_v3
    hq = np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    mixed = train_v3.MixedDegrade(world=None, project_fraction=1.0)
    lq, steps = mixed.degrade(hq, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    rng.random()  # the draw that picked v2's chain
    assert steps == [] and np.array_equal(lq, compact_v2.degrade_patch(hq, rng))
    cfg = tiny_config(tmp_path)
    assert not isinstance(train_v3.degrader(cfg), train_v3.MixedDegrade)  # 0: the world pipeline alone


def test_feature_matching_is_zero_for_the_hq_grows_with_blur_and_trains_only_the_output():
    import torch.nn.functional as F

    from facerefine.lab.train import compact_v3 as train_v3
    torch.manual_seed(0)
    disc = train_v3.Discriminators(8)
    hq = torch.rand(4, 3, 64, 64) * 2 - 1
    blur = lambda x, k: F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="replicate"), k, 1)  # noqa: E731
    assert float(train_v3.feature_match(disc.face, hq, hq)) == 0.0
    mild, strong = (float(train_v3.feature_match(disc.face, blur(hq, k), hq)) for k in (3, 7))
    assert 0 < mild < strong
    disc.requires_grad_(False)   # as in the generator step of train()
    out, real = blur(hq, 3).requires_grad_(True), hq.clone().requires_grad_(True)
    train_v3.feature_match(disc.face, out, real).backward()
    assert out.grad.abs().sum() > 0 and real.grad is None
    assert len(disc.face.features(hq)) == 3 and len(disc.eye.features(hq)) == 2


def test_the_gan_weights_ramp_up_from_zero(tmp_path):
    from facerefine.lab.train import compact_v3 as train_v3
    cfg = tiny_config(tmp_path, gan_ramp=100)
    assert [train_v3.gan_ramp(cfg, s) for s in (0, 25, 100, 500)] == [0.0, 0.25, 1.0, 1.0]
    assert train_v3.gan_ramp(tiny_config(tmp_path), 0) == 1.0   # 0: the full weight at once (legs 3 and before)
