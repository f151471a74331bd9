"""core.pipeline.restore_images: crop -> score -> lookup -> refine -> paste (synthetic faces, stand-in steps)."""
import pytest
import torch

from crop_fixtures import place_faces, similarity
from facerefine.core import pipeline
from facerefine.core.pipeline import RestoreOptions, RestoreSteps, build_steps, restore_images
from facerefine.errors import FaceRefineError


@pytest.fixture
def scene(monkeypatch):
    image, det, _ = place_faces(300, 340, [similarity(0.35, 4, 40, 30), similarity(0.25, -6, 200, 110)])
    monkeypatch.setattr(pipeline, "detect_faces", lambda images, options, timings=None: [det] * images.shape[0])
    return image


def test_restorer_none_crops_and_pastes_only(scene):
    res = restore_images(scene, RestoreOptions.from_values(restorer="none", device="cpu"))
    assert len(res.face_crops) == 2 and res.face_crops.history == ("crop",)
    assert res.faces_per_image == [2]
    assert res.masks.shape == (1, 300, 340) and res.masks.max() == 1.0
    assert torch.equal(res.images[0][res.masks[0] == 0], scene[0][res.masks[0] == 0])
    assert {"align", "paste"} <= set(res.timings)  # detect is patched out here


class FakeLookup:
    """Stands in for core.lookup.step.LookupStep: darkens the faces, returns a latent."""
    name = "lookup"
    restorer = "the restorer handle"

    def __init__(self, factor=0.5, noise=0.0):
        self.factor, self.noise, self.calls = factor, noise, []

    def __call__(self, face_crops):
        self.calls.append(face_crops)
        crops = face_crops.crops * self.factor
        if self.noise:
            crops = (crops + self.noise * torch.randn(crops.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
        return face_crops.with_crops(crops, "darken"), "the latent", "a note"


class FakeRefine:
    name = "refine"

    def __init__(self):
        self.calls = []

    def __call__(self, face_crops, latent, restorer, lq_crops=None, warnings=None, should_stop=None, index_offset=0):
        self.calls.append(dict(latent=latent, restorer=restorer, lq_crops=lq_crops, should_stop=should_stop))
        return face_crops.with_crops(face_crops.crops, "refine")


def test_lookup_then_refine_get_the_data_they_need(scene):
    lookup, refine = FakeLookup(), FakeRefine()
    calls = []
    stop = lambda: False  # noqa: E731
    res = restore_images(scene, RestoreOptions.from_values(device="cpu", color_correction="none"),
                         steps=RestoreSteps(lookup, refine), should_stop=stop, keep_crops=True,
                         progress=lambda stage, done, total: calls.append((stage, done, total)))
    assert res.face_crops.history == ("crop", "darken", "refine") and res.original_crops.history == ("crop",)
    (seen,) = refine.calls
    assert seen["latent"] == "the latent" and seen["restorer"] == "the restorer handle" and seen["should_stop"] is stop
    assert torch.equal(seen["lq_crops"], res.original_crops.crops)  # the degraded faces: refine's identity target
    assert calls == [("crop", 1, 4), ("lookup", 2, 4), ("refine", 3, 4), ("paste", 4, 4)]
    assert {"lookup", "refine"} <= set(res.timings) and res.latent == "the latent" and "a note" in res.warnings
    face = res.masks[0] == 1.0
    assert float(res.images[0][face].mean()) < float(scene[0][face].mean()) * 0.6


def test_values_go_to_the_step_that_owns_them(scene):
    opts = RestoreOptions.from_values(detector="mtcnn", crop_size=256, quality=0.3, lookup_mode="off",
                                      restorer="x", refine_steps=2, sampler="euler", identity_strength=0.7,
                                      visibility=0.0, color_correction="none", metric="piqe", seed=3)
    assert (opts.crop.detector, opts.crop.crop_size) == ("mtcnn", 256)
    assert (opts.lookup.restorer, opts.lookup.quality, opts.lookup.mode) == ("x", 0.3, "off")
    assert (opts.refine.steps, opts.refine.sampler, opts.refine.identity_strength) == (2, "euler", 0.7)
    assert (opts.paste.visibility, opts.paste.color_correction) == (0.0, "none")
    assert (opts.metric, opts.seed) == ("piqe", 3)
    assert opts.crop_options("cpu").device == "cpu" and opts.paste_options("cpu").color_correction == "none"
    res = restore_images(scene, RestoreOptions.from_values(device="cpu", visibility=0.0),
                         steps=RestoreSteps(FakeLookup(factor=0.0)))
    assert torch.equal(res.images, scene)  # visibility 0 reaches the paste step


def test_bad_values_are_clear_errors():
    with pytest.raises(TypeError, match="unknown control 'qualiti'"):
        RestoreOptions.from_values(qualiti=1.0)
    with pytest.raises(FaceRefineError, match="quality must be within"):
        RestoreOptions.from_values(quality=2.0)
    with pytest.raises(FaceRefineError, match="sampler"):
        RestoreOptions.from_values(sampler="nope")


def test_build_steps_only_what_is_asked():
    assert len(build_steps(RestoreOptions())) == 0 and build_steps(RestoreOptions()).names == []
    none = build_steps(RestoreOptions.from_values(restorer="none", refine_steps=5))
    assert none.lookup is None and none.refine is None  # refine needs the lookup


def test_score_step_scores_before_and_after(scene):
    res = restore_images(scene, RestoreOptions.from_values(device="cpu", metric="piqe"),
                         steps=RestoreSteps(FakeLookup(factor=1.0, noise=0.2)))
    before = [q.metric for f in res.original_crops.faces for q in f.quality]
    after = [q.metric for f in res.face_crops.faces for q in f.quality]
    assert before == after == ["piqe", "piqe"]
    assert [f.quality[0].raw for f in res.original_crops.faces] != [f.quality[0].raw for f in res.face_crops.faces]
    bad = restore_images(scene, RestoreOptions.from_values(device="cpu", metric="no-such-metric"))
    assert any("quality scores unavailable" in w for w in bad.warnings) and len(bad.face_crops) == 2


def test_no_face_returns_input_with_a_warning(monkeypatch):
    from facerefine.core.types import RawDetections
    monkeypatch.setattr(pipeline, "detect_faces", lambda images, options, timings=None: [RawDetections.empty()])
    image = torch.rand(1, 40, 50, 3)
    res = restore_images(image, RestoreOptions(device="cpu"), steps=RestoreSteps())
    assert torch.equal(res.images, image) and res.face_crops.is_empty
    assert any("no face" in w for w in res.warnings)


def test_device_errors_are_clear():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(FaceRefineError, match="CUDA"):
        pipeline.resolve_device("cuda")
    assert pipeline.resolve_device("auto") == "cpu"
