"""Reference detail (core/refine/reference_detail.py): a photo of the same person lends its fine detail to a
blurred restored face, leaves sharp faces and other people alone, and runs with or without refine steps."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from facerefine.core.lookup.options import LookupOptions  # noqa: E402
from facerefine.core.refine.reference import ReferenceFace  # noqa: E402
from facerefine.core.refine.reference_detail import transfer_face, transfer_reference_detail  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _crop(path, size=512):
    from facerefine.core.crop.options import CropOptions
    from facerefine.core.crop.step import crop_faces
    from facerefine.core.image_io import load_image
    return crop_faces(load_image(path).image, CropOptions(crop_size=size, max_faces=1))


def _psnr(a, b):
    return float(10 * np.log10(1.0 / np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


def _blur(img, sigma):
    import cv2
    return cv2.GaussianBlur(img, (0, 0), sigma)


@pytest.fixture(scope="module")
def pair():
    """A London face (neutral) and the same person's smiling photo, aligned by the crop step."""
    from conftest import SHARED_DATA
    london_dir = SHARED_DATA / "london"
    if not london_dir.is_dir():
        pytest.skip("../shared/data/london not present")
    neutral = sorted((london_dir / "neutral").glob("*.jpg"))[0]
    smiling = london_dir / "smiling" / (neutral.stem.split("_")[0] + "_08.jpg")
    if not smiling.is_file():
        pytest.skip("no smiling photo of the same person")
    return _crop(neutral), _crop(smiling)


def _hwc(face_crops, i=0):
    return np.ascontiguousarray(face_crops.crops[i].permute(1, 2, 0).numpy(), dtype=np.float32)


def test_a_blurred_face_takes_the_references_detail_and_gets_closer_to_the_truth(pair):
    from facerefine.core.crop.landmarks import crop_landmarks
    hq, ref = pair
    truth = _hwc(hq)
    blurred = _blur(truth, 4.0)  # what a restorer returns for a heavily degraded face: no fine detail
    lm = crop_landmarks(hq)[0]
    out, weight, deficit, conf = transfer_face(blurred, _hwc(ref), lm)
    assert deficit > 0.5 and weight == 1.0 and conf > 0.5
    assert _psnr(out, truth) > _psnr(blurred, truth) + 0.3
    # the reference's own expression does not come through where it disagrees: the output stays closer to the
    # truth than the (smiling) reference photo itself
    assert _psnr(out, truth) > _psnr(_hwc(ref), truth) + 3.0


def test_a_sharp_face_is_left_alone(pair):
    from facerefine.core.crop.landmarks import crop_landmarks
    hq, ref = pair
    truth = _hwc(hq)
    out, weight, deficit, _ = transfer_face(truth, _hwc(ref), crop_landmarks(hq)[0])
    assert deficit < 0.1 and weight == 0.0
    assert np.array_equal(out, truth.clip(0, 1))


def test_amount_zero_returns_the_crops_unchanged_and_history_records_the_step(pair):
    hq, ref = pair
    blurred = hq.with_crops(torch.from_numpy(_blur(_hwc(hq), 4.0)).permute(2, 0, 1)[None], "blur")
    face = ReferenceFace.from_crops(ref, 512)
    same, report = transfer_reference_detail(blurred, face, amount=0.0)
    assert same is blurred and report.amount == []
    out, report = transfer_reference_detail(blurred, face)
    assert out.history[-1] == "reference-detail" and report.amount == [1.0]
    assert out.crops.shape == blurred.crops.shape and not torch.equal(out.crops, blurred.crops)


def test_only_the_reference_person_takes_detail_in_a_group(pair, london_dir):
    """Two faces of one image: the reference's person and someone else. The other face is left alone."""
    import dataclasses

    from facerefine.core.refine.reference_detail import same_person
    from facerefine.core.types import FaceCrops
    from facerefine.models.arch.identity import load_id_model
    hq, ref = pair
    other = _crop(sorted((london_dir / "neutral").glob("*.jpg"))[5])
    faces = (hq.faces[0], dataclasses.replace(other.faces[0], image_index=hq.faces[0].image_index))
    crops = torch.cat([hq.crops, other.crops])
    blurred = torch.from_numpy(np.stack([_blur(_hwc(hq), 4.0), _blur(_hwc(other), 4.0)])).permute(0, 3, 1, 2)
    group = FaceCrops(blurred, faces, 512)
    from facerefine.core.crop.landmarks import crop_landmarks
    lm = torch.from_numpy(crop_landmarks(group)).float()
    face = ReferenceFace(ref.crops, torch.from_numpy(crop_landmarks(ref)).float())
    match = same_person(load_id_model("dlib"), group, lm, face)
    assert match == [True, False]
    out, report = transfer_reference_detail(group, face, landmarks=lm.numpy(), same_person=match)
    assert torch.equal(out.crops[1], group.crops[1]) and not torch.equal(out.crops[0], group.crops[0])
    assert report.skipped and report.skipped[0][0] == 1
    assert crops.shape == out.crops.shape


def test_refine_step_with_reference_and_no_steps_transfers_detail(pair, london_dir):
    """`--reference` with refine steps 0: the refine step runs for the reference detail alone, with the
    embedded default restorer, and the face gets closer to the truth."""
    from facerefine.core.lookup.lookup import lookup
    from facerefine.models.restorers import load_restorer
    from facerefine.core.refine.options import RefineOptions
    from facerefine.core.refine.step import prepare_refine
    hq, ref = pair
    small = torch.nn.functional.interpolate(hq.crops, size=(48, 48), mode="bilinear", antialias=True)
    lq = hq.with_crops(torch.nn.functional.interpolate(small, size=(512, 512), mode="bicubic"), "degrade")
    restorer = load_restorer("facerefine-compact-v2", "cpu")
    restored, latent = lookup(lq, restorer, LookupOptions(quality=1.0, fidelity=0.5), keep_latent=True)
    smiling = sorted((london_dir / "smiling").glob(hq_stem(london_dir) + "_08.jpg"))[0]
    options = RefineOptions(steps=0, reference=str(smiling))
    assert options.detail_only and options.wanted
    assert not RefineOptions(steps=0, reference=str(smiling), reference_detail=0.0).wanted
    step = prepare_refine(options, "cpu")
    step.prepare(restorer)
    assert step.prior is None and step.id_model is not None
    out = step(restored, latent, restorer)
    assert out.history[-1] == "reference-detail"
    truth = hq.crops[0].permute(1, 2, 0).numpy()
    assert _psnr(out.crops[0].permute(1, 2, 0).numpy(), truth) > _psnr(restored.crops[0].permute(1, 2, 0).numpy(), truth)
    # the library call (as the ComfyUI node and the eval make it): 0 steps, no device given
    from facerefine.core.refine.refine import RefineRun, refine_latent
    from facerefine.models.arch.identity import load_id_model
    context = RefineRun(restorer, None, load_id_model("dlib"), ReferenceFace.from_crops(ref, 512))
    res = refine_latent(restored, latent, context, RefineOptions(steps=0))
    assert res.crops.history[-1] == "reference-detail" and res.info["reference_detail"].amount[0] > 0
    assert torch.equal(res.crops.crops, out.crops)


def hq_stem(london_dir):
    return sorted((london_dir / "neutral").glob("*.jpg"))[0].stem.split("_")[0]


def test_refine_node_with_zero_steps_and_a_reference_transfers_detail(pair):
    """The ComfyUI refine node: steps 0 + a connected reference IMAGE = the reference detail alone;
    reference_detail 0 (or no reference) returns the crops untouched."""
    from facerefine.core.lookup.lookup import lookup
    from facerefine.models.restorers import load_restorer
    from facerefine.models.arch.identity import load_id_model
    from facerefine.nodes.refine_nodes import FaceRefineIdentityLatentRefine
    hq, ref = pair
    small = torch.nn.functional.interpolate(hq.crops, size=(48, 48), mode="bilinear", antialias=True)
    lq = hq.with_crops(torch.nn.functional.interpolate(small, size=(512, 512), mode="bicubic"), "degrade")
    restorer = load_restorer("facerefine-compact-v2", "cpu")
    restored, latent = lookup(lq, restorer, LookupOptions(quality=1.0, fidelity=0.5), keep_latent=True)
    image = ref.crops.permute(0, 2, 3, 1)  # an IMAGE [1,H,W,3]: the aligned smiling photo
    kw = dict(face_crops=restored, face_latent=latent, restorer=restorer, latent_prior=None,
              id_model=load_id_model("dlib"), steps=0, strength=0.4, identity_strength=0.5, sampler="dpmpp_2m",
              seed=0, device="cpu")
    (out,) = FaceRefineIdentityLatentRefine().refine(reference=image, **kw)
    assert out.history[-1] == "reference-detail" and not torch.equal(out.crops, restored.crops)
    (off,) = FaceRefineIdentityLatentRefine().refine(reference=image, reference_detail=0.0, **kw)
    assert off is restored
    (none,) = FaceRefineIdentityLatentRefine().refine(**kw)
    assert none is restored


def test_guidance_toward_a_reference_is_scaled_by_the_detail_a_face_lacks(pair):
    """A sharp face (its own photo restored: no deficit) gets no identity guidance toward the reference;
    a blurred one gets it."""
    from facerefine.core.lookup.lookup import lookup
    from facerefine.models.restorers import load_restorer
    from facerefine.core.refine.options import RefineOptions
    from facerefine.core.refine.refine import RefineRun, refine_latent
    from facerefine.models.arch.identity import load_id_model
    hq, ref = pair
    restorer = load_restorer("facerefine-compact-v2", "cpu")
    guide = load_id_model("dlib")
    small = torch.nn.functional.interpolate(hq.crops, size=(48, 48), mode="bilinear", antialias=True)
    blurred = hq.with_crops(torch.nn.functional.interpolate(small, size=(512, 512), mode="bicubic"), "degrade")
    for lq, expect_guided in ((hq, False), (blurred, True)):
        restored, latent = lookup(lq, restorer, LookupOptions(quality=1.0, fidelity=0.5), keep_latent=True)
        res = refine_latent(restored, latent, RefineRun(restorer, None, guide, ReferenceFace.from_crops(ref, 512)),
                            RefineOptions(steps=2, identity_strength=1.0, reference_detail=0.0, guidance_steps=1,
                                          identity_views=1))
        weight = res.info["identity_strength_per_face"][0]
        assert (weight > 0.5) if expect_guided else (weight == 0.0), weight
