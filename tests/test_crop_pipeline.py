"""core.pipeline.restore_images: crop -> steps -> paste, with the step hook (synthetic faces)."""
import pytest
import torch

from crop_fixtures import place_faces, similarity
from facerefine.core import pipeline
from facerefine.core.pipeline import RestoreOptions, StepContext, build_steps, restore_images
from facerefine.errors import FaceRefineError


@pytest.fixture
def scene(monkeypatch):
    image, det, _ = place_faces(300, 340, [similarity(0.35, 4, 40, 30), similarity(0.25, -6, 200, 110)])
    monkeypatch.setattr(pipeline, "detect_faces", lambda images, options, timings=None: [det] * images.shape[0])
    return image


def test_restorer_none_crops_and_pastes_only(scene):
    res = restore_images(scene, RestoreOptions(restorer="none", device="cpu"))
    assert len(res.face_crops) == 2 and res.face_crops.history == ("crop",)
    assert res.faces_per_image == [2]
    assert res.masks.shape == (1, 300, 340) and res.masks.max() == 1.0
    assert torch.equal(res.images[0][res.masks[0] == 0], scene[0][res.masks[0] == 0])
    assert {"align", "paste"} <= set(res.timings)  # detect is patched out here


def test_steps_run_in_order_and_share_the_context(scene):
    seen = []

    def darken(face_crops, ctx: StepContext):
        seen.append("darken")
        ctx.state["darkened"] = True
        return face_crops.with_crops(face_crops.crops * 0.5, "darken")

    def check(face_crops, ctx: StepContext):
        seen.append("check")
        assert ctx.state["darkened"]
        return face_crops

    calls = []
    res = restore_images(scene, RestoreOptions(device="cpu", color_correction="none"),
                         steps=[("darken", darken), ("check", check)],
                         progress=lambda stage, done, total: calls.append((stage, done, total)))
    assert seen == ["darken", "check"] and res.face_crops.history == ("crop", "darken")
    assert res.original_crops.history == ("crop",)
    assert calls[-1] == ("paste", 4, 4) and "darken" in res.timings
    face = res.masks[0] == 1.0
    assert float(res.images[0][face].mean()) < float(scene[0][face].mean()) * 0.6


def test_flat_options_override_nested_ones(scene):
    def white(face_crops, ctx):
        return face_crops.with_crops(torch.ones_like(face_crops.crops), "white")
    res = restore_images(scene, RestoreOptions(device="cpu", visibility=0.0), steps=[("white", white)])
    assert torch.equal(res.images, scene)
    opts = RestoreOptions(detector="mtcnn", color_correction="none")
    assert opts.crop_options("cpu").detector == "mtcnn" and opts.paste_options("cpu").color_correction == "none"


def test_builders_hook(monkeypatch):
    monkeypatch.setattr(pipeline, "STEP_BUILDERS", [])
    pipeline.register_step_builder("refine", lambda o: (lambda fc, ctx: fc) if o.refine_steps else None)
    pipeline.register_step_builder("lookup", lambda o: (lambda fc, ctx: fc) if o.wants_restorer else None,
                                   before="refine")
    assert [n for n, _ in pipeline.STEP_BUILDERS] == ["lookup", "refine"]
    assert [n for n, _ in build_steps(RestoreOptions(restorer="x", refine_steps=2))] == ["lookup", "refine"]
    assert build_steps(RestoreOptions()) == []


def test_restorer_without_lookup_step_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(pipeline, "STEP_BUILDERS", [])
    with pytest.raises(FaceRefineError, match="lookup"):
        build_steps(RestoreOptions(restorer="codeformer"))


def test_no_face_returns_input_with_a_warning(monkeypatch):
    from facerefine.core.crop import RawDetections
    monkeypatch.setattr(pipeline, "detect_faces", lambda images, options, timings=None: [RawDetections.empty()])
    image = torch.rand(1, 40, 50, 3)
    res = restore_images(image, RestoreOptions(device="cpu"), steps=[])
    assert torch.equal(res.images, image) and res.face_crops.is_empty
    assert any("no face" in w for w in res.warnings)


def test_device_errors_are_clear():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(FaceRefineError, match="CUDA"):
        pipeline.resolve_device("cuda")
    assert pipeline.resolve_device("auto") == "cpu"
