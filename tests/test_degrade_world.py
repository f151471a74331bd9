"""lab/degrade_world.py: the second-order "degradations of the world" pipeline (issue 25, item 1).

Seeded to the byte, every family does something and can be held out, shapes and dtypes survive odd and
tiny sizes, grey noise stays grey, and the severity spans mild to severe. No shared data needed: the test
image is 1/f^1.75 noise (natural-image-like spectrum)."""
import time

import numpy as np
import pytest

from facerefine.lab import degrade_world as W
from facerefine.lab.degrade_world import DEFAULT_HOLD_OUT, FAMILIES, DegradeWorld, degrade_family_only


def natural(h=160, w=160, seed=0, alpha=1.75, grey=False):
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx ** 2 + fy ** 2)
    f[0, 0] = 1.0
    chans = []
    for _ in range(1 if grey else 3):
        spec = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) / f ** alpha
        spec[0, 0] = 0
        chans.append(np.fft.irfft2(spec, s=(h, w)))
    x = np.stack(chans * (3 if grey else 1), -1)
    x = (x - x.mean()) / x.std() * 45 + 120
    return np.clip(x, 0, 255).astype(np.uint8)


def psnr(a, b):
    mse = float(((a.astype(np.float64) - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def only(family):
    return DegradeWorld(hold_out=tuple(f for f in FAMILIES if f != family))


def test_api_constants():
    assert set(FAMILIES) == {"blur", "resize", "noise", "jpeg", "video", "ringing", "old_photo"}
    assert DEFAULT_HOLD_OUT == ("video",)
    assert DegradeWorld().hold_out == DEFAULT_HOLD_OUT
    assert "video" not in DegradeWorld().families
    with pytest.raises(ValueError, match="unknown degradation families"):
        DegradeWorld(hold_out=("blurr",))
    with pytest.raises(ValueError, match="uint8"):
        DegradeWorld()(natural().astype(np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown degradation family"):
        degrade_family_only(natural(), "vhs", np.random.default_rng(0))


def test_same_seed_same_bytes_and_other_seed_differs():
    hq = natural(97, 131, seed=1)
    world = DegradeWorld(hold_out=(), prob={"video": 0.5})  # video included: libx264 must be deterministic too
    a = [world(hq, np.random.default_rng([7, i])) for i in range(16)]
    b = [world(hq, np.random.default_rng([7, i])) for i in range(16)]
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b))
    # one generator drawn sequentially continues deterministically too
    r1, r2 = np.random.default_rng(3), np.random.default_rng(3)
    seq1 = [world.degrade(hq, r1) for _ in range(8)]
    seq2 = [world.degrade(hq, r2) for _ in range(8)]
    assert all(x[0].tobytes() == y[0].tobytes() and x[1] == y[1] for x, y in zip(seq1, seq2))
    logged = [s["family"] for i in range(16) for s in world.degrade(hq, np.random.default_rng([7, i]))[1]]
    assert "video" in logged and "jpeg" in logged and "old_photo" in logged
    c = [world(hq, np.random.default_rng([8, i])) for i in range(16)]
    assert sum(x.tobytes() != y.tobytes() for x, y in zip(a, c)) >= 14
    for fam in FAMILIES:
        v1 = degrade_family_only(hq, fam, np.random.default_rng(11))
        v2 = degrade_family_only(hq, fam, np.random.default_rng(11))
        assert v1.tobytes() == v2.tobytes(), fam


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_changes_the_image_alone(family):
    hq = natural(seed=2)
    world = only(family)
    drawn = 0
    for i in range(12):
        lq, steps = world.degrade(hq, np.random.default_rng([family.__len__(), i]))
        assert {s["family"] for s in steps} <= {family}, steps  # nothing of any other family, no base
        if steps:
            drawn += 1
            assert lq.tobytes() != hq.tobytes(), steps
        else:
            assert lq.tobytes() == hq.tobytes()
    assert drawn >= 1
    # forced (p = 1), without the base: always changes it, and only through this family
    for i in range(3):
        lq, steps = DegradeWorld(hold_out=()).family_only(hq, family, np.random.default_rng(i), base=False)
        assert steps and {s["family"] for s in steps} == {family}
        assert lq.tobytes() != hq.tobytes()
        assert psnr(lq, hq) < 60


def test_family_effects_are_what_they_say():
    hq = natural(seed=4)
    # JPEG alone = libjpeg round trips at the logged qualities
    for i in range(6):
        lq, steps = DegradeWorld(hold_out=()).family_only(hq, "jpeg", np.random.default_rng(i), base=False)
        x = hq.astype(np.float32)
        for s in steps:
            x = W._jpeg(x, s["quality"])
        assert np.array_equal(lq, W._to_u8(x))
    # noise alone keeps the local mean; blur alone removes fine detail and keeps the mean
    import cv2
    fine = lambda im: float(np.abs(im.astype(np.float32) - cv2.GaussianBlur(im.astype(np.float32), (0, 0), 1.0)).mean())
    for i in range(4):
        n, _ = DegradeWorld(hold_out=()).family_only(hq, "noise", np.random.default_rng(i), base=False)
        lo = lambda im: cv2.GaussianBlur(im.astype(np.float32), (0, 0), 4.0)
        assert np.abs(lo(n) - lo(hq)).mean() < 3.0
        b, _ = DegradeWorld(hold_out=()).family_only(hq, "blur", np.random.default_rng(i), base=False)
        assert fine(b) < fine(hq)
        assert abs(float(b.mean()) - float(hq.mean())) < 2.0


def test_held_out_family_is_never_drawn():
    hq = natural(64, 64, seed=5)
    world = DegradeWorld()
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(400):
        _, steps = world.degrade(hq, rng)
        seen |= {s["family"] for s in steps}
    assert "video" not in seen
    assert seen == set(FAMILIES) - {"video"}  # every other family does occur in training
    world = DegradeWorld(hold_out=("old_photo", "noise"))
    seen = set()
    for _ in range(200):
        _, steps = world.degrade(hq, rng)
        seen |= {s["family"] for s in steps}
    assert not seen & {"old_photo", "noise"}
    assert DegradeWorld(hold_out=FAMILIES)(hq, rng).tobytes() == hq.tobytes()


def test_family_only_builds_the_generalisation_set_with_a_mild_base():
    hq = natural(seed=6)
    lq, steps = DegradeWorld().family_only(hq, "video", np.random.default_rng(0))  # held out, still available
    fams = {s["family"] for s in steps}
    assert fams == {"base", "video"}
    assert 18 < psnr(lq, hq) < 40
    mild, _ = DegradeWorld().family_only(hq, "old_photo", np.random.default_rng(0))
    assert mild.shape == hq.shape and mild.dtype == np.uint8


@pytest.mark.parametrize("shape", [(97, 131), (131, 97), (16, 16), (5, 7), (160, 160)])
def test_shape_and_dtype_survive_any_size(shape):
    hq = natural(*shape, seed=7)
    world = DegradeWorld(hold_out=())
    rng = np.random.default_rng(1)
    for _ in range(25):
        lq = world(hq, rng)
        assert lq.shape == hq.shape and lq.dtype == np.uint8
    for fam in FAMILIES:
        for base in (False, True):
            lq, _ = world.family_only(hq, fam, rng, base=base)
            assert lq.shape == hq.shape and lq.dtype == np.uint8, (fam, base)


def test_grey_noise_keeps_a_grey_image_grey():
    hq = natural(97, 131, seed=8, grey=True)
    assert np.array_equal(hq[..., 0], hq[..., 1]) and np.array_equal(hq[..., 1], hq[..., 2])
    world = only("noise")
    grey_draws = colour_draws = 0
    for i in range(80):
        lq, steps = world.degrade(hq, np.random.default_rng([9, i]))
        if not steps:
            continue
        if all(s["grey"] for s in steps):
            grey_draws += 1
            assert np.array_equal(lq[..., 0], lq[..., 1]) and np.array_equal(lq[..., 1], lq[..., 2]), steps
        elif not any(s["grey"] for s in steps):
            colour_draws += 1
            assert not np.array_equal(lq[..., 0], lq[..., 1])
    assert grey_draws >= 5 and colour_draws >= 5
    # both kinds of grey noise (Gaussian and Poisson) directly
    x = hq.astype(np.float32)
    for y in (W._gaussian_noise(x, 10.0, True, np.random.default_rng(0)),
              W._poisson_noise(x, 1.5, True, np.random.default_rng(0))):
        assert np.array_equal(y[..., 0], y[..., 2]) and not np.array_equal(y, x)


def test_poisson_noise_is_signal_dependent():
    dark = np.full((64, 64, 3), 20, np.float32)
    bright = np.full((64, 64, 3), 220, np.float32)
    sd = lambda x: float((W._poisson_noise(x, 1.0, False, np.random.default_rng(0)) - x).std())
    assert 3.0 < sd(dark) < 6.0 and 13.0 < sd(bright) < 17.0  # sqrt(20) = 4.5, sqrt(220) = 14.8


def test_severity_spans_mild_to_severe():
    hq = natural(seed=10)
    world = DegradeWorld()
    rng = np.random.default_rng(12)
    values = []
    for _ in range(200):
        lq, steps = world.degrade(hq, rng)
        if steps:
            values.append(psnr(lq, hq))
    values = np.array(values)
    assert (values > 30).sum() >= 5, np.percentile(values, [0, 50, 100])
    assert (values < 20).sum() >= 5, np.percentile(values, [0, 50, 100])
    assert values.max() - values.min() > 15


def test_kernels_are_normalised_and_shaped():
    rng = np.random.default_rng(0)
    for round2 in (False, True):
        for _ in range(40):
            k, _ = W._random_kernel(rng, 1.0, round2)
            assert k.ndim == 2 and k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
            assert abs(float(k.sum()) - 1) < 1e-4 and float(k.min()) >= 0
    sinc = W._sinc_kernel(21, np.pi / 4)
    assert abs(float(sinc.sum()) - 1) < 1e-4 and float(sinc.min()) < 0  # negative lobes: ringing


def test_fast_enough_per_sample():
    """The training loop draws ~16 per step: the mean at 160² must stay a few ms (loose bound: shared CPU)."""
    hq = natural(seed=13)
    world = DegradeWorld()
    rng = np.random.default_rng(0)
    world(hq, rng)
    t0 = time.perf_counter()
    for _ in range(100):
        world(hq, rng)
    assert (time.perf_counter() - t0) / 100 < 0.030
