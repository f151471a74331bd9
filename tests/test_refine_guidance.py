"""refine(): identity guidance, masks, determinism, reference photo, progress/interrupt (tiny real models)."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import refine_fixtures as fx  # noqa: E402

from facerefine.core.refine.guidance import region_prior_mask  # noqa: E402
from facerefine.core.refine.options import RefineOptions  # noqa: E402
from facerefine.core.refine.reference import ReferenceFace  # noqa: E402
from facerefine.core.refine.refine import RefineInterrupted, RefineRun, refine, refine_latent  # noqa: E402
from facerefine.errors import NoFaceError  # noqa: E402
from facerefine.models.arch.identity import LatentMask  # noqa: E402


# one torch thread: small ops on a shared CPU are faster without OpenMP spin-waits
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    restorer = fx.load_tiny_restorer(tmp_path_factory.mktemp("tiny"))
    lq = fx.make_faces(2, 256, seed=0)
    restored, latent = fx.lookup_latent(lq, restorer)
    prior = fx.tiny_prior(latent)
    id_model = fx.small_arcface()
    other = fx.make_faces(1, 256, seed=7)  # a different "person": the identity target
    return dict(restorer=restorer, lq=lq, restored=restored, latent=latent, prior=prior, id_model=id_model,
                other=other)


def run(s, reference=None, prior="setup", seed=0, progress=None, should_stop=None, **kw):
    # guidance mechanics: the full strength for every face, and no reference detail on top
    args = dict(steps=4, strength=0.5, identity_strength=0.0, reference_detail=0.0, gate_by_detail=False)
    args.update(kw)
    face = None if reference is None else ReferenceFace.from_photo(reference, s["restored"].crop_size)
    context = RefineRun(s["restorer"], s["prior"] if prior == "setup" else prior, s["id_model"], face, seed=seed,
                        should_stop=should_stop, progress=progress)
    return refine_latent(s["restored"], s["latent"], context, RefineOptions(**args), s["lq"].crops)


def test_zero_steps_or_strength_returns_lookup_unchanged(setup):
    s = setup
    for kw in (dict(steps=0), dict(steps=8, strength=0.0)):
        out = refine(s["restored"], s["latent"], RefineRun(s["restorer"], s["prior"], s["id_model"]),
                     RefineOptions(identity_strength=1.0, **kw))
        assert out is s["restored"]


def test_same_seed_same_output_other_seed_differs(setup):
    a = run(setup, identity_strength=1.0, reference=setup["other"])
    b = run(setup, identity_strength=1.0, reference=setup["other"])
    c = run(setup, identity_strength=1.0, reference=setup["other"], seed=1)
    assert torch.equal(a.crops.crops, b.crops.crops) and torch.equal(a.latent, b.latent)
    assert not torch.equal(a.latent, c.latent)
    assert a.crops.history[-1].startswith("refine:dpmpp_2m")
    assert a.crops.faces == setup["restored"].faces


@pytest.mark.parametrize("fresh,strengths", [(4, (0.0, 0.25, 0.5, 1.0)),  # a fresh gradient at every step
                                              (1, (0.0, 0.2, 0.4))])         # the default: one, reused
def test_stronger_guidance_raises_identity_similarity(setup, fresh, strengths):
    target = setup["id_model"].embed(setup["other"].crops)
    sims = []
    for strength in strengths:
        res = run(setup, identity_strength=strength, reference=setup["other"], guidance_steps=fresh)
        with torch.no_grad():
            sims.append(float((setup["id_model"].embed(res.crops.crops) * target).sum(1).mean()))
        if strength:
            assert res.target_source == "reference" and res.mask_source == "region-prior"
    assert all(b > a for a, b in zip(sims, sims[1:])), sims


def test_positions_outside_the_mask_match_unguided_sampling_bit_for_bit(setup):
    for sampler, fresh in (("dpmpp_2m", 1), ("heun", 4)):  # heun: a fresh gradient at every step
        plain = run(setup, identity_strength=0.0, sampler=sampler)
        guided = run(setup, identity_strength=2.0, reference=setup["other"], sampler=sampler, guidance_steps=fresh)
        outside = ~guided.mask.bool().expand_as(guided.latent)
        assert 0 < int(outside.sum()) < outside.numel()
        assert torch.equal(guided.latent[outside], plain.latent[outside])
        assert not torch.equal(guided.latent[~outside], plain.latent[~outside])


def test_learned_mask_replaces_the_region_prior(setup):
    s = setup
    h, w = s["latent"].quantized.shape[-2:]
    mask = LatentMask(h, init=-5.0)
    with torch.no_grad():
        mask.logits[..., 2:5, 3:9] = 5.0
    s["id_model"].mask = mask
    try:
        res = run(s, identity_strength=2.0, reference=s["other"])
    finally:
        s["id_model"].mask = None
    assert res.mask_source == "learned"
    assert int(res.mask[0].sum()) == 3 * 6 and bool(res.mask[:, :, 2:5, 3:9].all())
    plain = run(s, identity_strength=0.0)
    changed = (res.latent != plain.latent).any(dim=1)
    assert bool(changed[:, 2:5, 3:9].any()) and not bool(changed[:, :2].any())


def test_region_prior_covers_eyes_nose_mouth_not_background():
    faces = fx.make_faces(1, 512)
    m = region_prior_mask(faces, (16, 16))[0, 0]
    for x, y in fx.TEMPLATE_512:  # every landmark's cell is inside
        assert m[int(y / 32), int(x / 32)] == 1
    assert m[0].sum() == 0 and m[-1].sum() == 0 and m[:, 0].sum() == 0 and m[:, -1].sum() == 0
    assert 0.1 < float(m.mean()) < 0.5


def test_lq_target_and_no_prior(setup):
    """No latent prior: only masked identity updates change the latent; target = the degraded face."""
    s = setup
    plain = run(s, prior=None, identity_strength=0.0, gate_by_detail=True, reference_detail=1.0)
    assert torch.allclose(plain.latent, s["latent"].quantized.float(), atol=1e-4)
    res = run(s, prior=None, identity_strength=1.0, gate_by_detail=True, reference_detail=1.0)
    assert res.target_source == "lq"
    assert bool((res.similarity_after > res.similarity_before).all())


def test_progress_and_interruption(setup):
    seen = []
    run(setup, identity_strength=1.0, reference=setup["other"], progress=lambda d, t: seen.append((d, t)))
    assert [d for d, _ in seen] == list(range(1, len(seen) + 1)) and seen[-1][0] == seen[-1][1] == 8
    calls = []
    with pytest.raises(RefineInterrupted):
        run(setup, should_stop=lambda: calls.append(1) or len(calls) >= 3)
    assert len(calls) == 3


def test_reference_photo_is_aligned_and_used(setup, london_dir):
    from facerefine.core.image_io import load_image
    path = sorted((london_dir / "neutral").glob("*.jpg"))[0]
    image = load_image(path).image
    crop = ReferenceFace.from_photo(image, 256).crop
    assert crop.shape == (1, 3, 256, 256)
    # aligned like the crop step: the eyes sit at the FFHQ template rows (darker than the cheeks below)
    gray = crop[0].mean(0)
    eye_row, cheek_row = int(240 / 2), int(290 / 2)
    assert float(gray[eye_row - 4:eye_row + 4, 80:170].mean()) < float(gray[cheek_row - 4:cheek_row + 4, 80:170].mean())
    res = run(setup, identity_strength=2.0, reference=image)
    assert res.target_source == "reference"
    target = setup["id_model"].embed(crop)
    with torch.no_grad():
        after = (setup["id_model"].embed(res.crops.crops) * target).sum(1)
        before = (setup["id_model"].embed(run(setup).crops.crops) * target).sum(1)
    assert bool((after > before).all())


def test_reference_without_a_face_is_a_clear_error(setup):
    blank = torch.full((1, 256, 256, 3), 0.5)
    with pytest.raises(NoFaceError, match="no face found in the reference"):
        run(setup, identity_strength=1.0, reference=blank)
