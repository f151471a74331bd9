"""Exemplar detail (core/detail/exemplars.py): a face too blurred to hold detail takes the nearest bundled face's
fine detail inside its outline; sharp faces, quality 0, video and grey tones are left as they were; a broken
exemplar file gets a clear message."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from facerefine.core.detail import exemplars as ex  # noqa: E402
from facerefine.errors import FaceRefineError, WeightsFormatError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def heldout_face():
    """A held-out London face (its identity is not among the exemplars), aligned by the crop step at 512²."""
    from conftest import SHARED_DATA
    from facerefine.core.crop.options import CropOptions
    from facerefine.core.crop.step import crop_faces
    from facerefine.core.image_io import load_image
    from facerefine.lab import datasets
    root = SHARED_DATA / "london"
    if not root.is_dir():
        pytest.skip("../shared/data/london not present")
    path = datasets.london_split(root)["heldout_neutral"][0]
    return crop_faces(load_image(path).image, CropOptions(crop_size=512, max_faces=1, detector="mtcnn"))


def _blurred(face_crops, sigma=5.0):
    import cv2
    img = face_crops.crops[0].permute(1, 2, 0).numpy()
    out = cv2.GaussianBlur(np.ascontiguousarray(img, dtype=np.float32), (0, 0), sigma)
    return face_crops.with_crops(torch.from_numpy(out).permute(2, 0, 1)[None], "blurred")


def _fine_energy(crops, box):
    """Mean squared fine detail (image minus Gaussian blur, sigma 1.5 px) inside the box."""
    import cv2
    x0, y0, x1, y1 = box
    img = crops[0].permute(1, 2, 0).numpy().astype(np.float32)
    band = img - cv2.GaussianBlur(img, (0, 0), 1.5)
    return float((band[y0:y1, x0:x1] ** 2).mean())


def test_the_bundled_exemplars_are_composites_of_eight_training_people():
    """No photo is stored: each exemplar is the composite of >= 8 different people, none of them held out."""
    from safetensors import safe_open

    from facerefine.lab import datasets
    from facerefine.models.locate import resolve
    exemplars = ex.load_exemplars()
    assert len(exemplars) >= 16
    assert exemplars.image(0).shape == (ex.WINDOW[3] - ex.WINDOW[1], ex.WINDOW[2] - ex.WINDOW[0], 3)
    with safe_open(str(resolve(ex.WEIGHTS_NAME, "facerefine", download=False)), "pt") as f:
        meta = f.metadata()
    groups = [g.split("+") for g in meta["groups"].split(";")]
    assert len(groups) == len(exemplars) and "CC BY 4.0" in meta["license"]
    people = [{datasets.london_identity(Path(p)) for p in g} for g in groups]
    assert min(len(p) for p in people) >= 8 and all(len(p) == len(g) for p, g in zip(people, groups))
    from conftest import SHARED_DATA
    if (SHARED_DATA / "london").is_dir():
        assert not set().union(*people) & set(datasets.heldout_identities(SHARED_DATA / "london"))


def test_a_blurred_face_takes_detail_around_its_eyes_only(heldout_face):
    from facerefine.core.crop.landmarks import crop_landmarks
    blurred = _blurred(heldout_face)
    out, report = ex.apply_exemplar_detail(blurred, 1.0)
    assert report.amount[0] == 1.0 and report.deficit[0] > 0.5
    assert out.history[-1] == "exemplar-detail"
    lm = crop_landmarks(blurred)[0] * 512
    eyes = (int(lm[0, 0]) - 40, int(lm[:2, 1].mean()) - 30, int(lm[1, 0]) + 40, int(lm[:2, 1].mean()) + 30)
    assert _fine_energy(out.crops, eyes) > 10 * _fine_energy(blurred.crops, eyes)
    # outside the eye band (background corners, hair, forehead, nostrils, mouth, chin) nothing changes
    diff = (out.crops[0] - blurred.crops[0]).abs().amax(0)
    assert float(diff[:100].max()) == 0.0 and float(diff[:, :80].max()) == 0.0 and float(diff[:, -80:].max()) == 0.0
    assert float(diff[int(lm[2, 1]) + 10:].max()) < 0.5 / 255  # the feathered edge's tail only
    # colours come from the restored face: the change is the same in R, G and B (luma detail only)
    delta = out.crops[0] - blurred.crops[0]
    inside = diff > 1e-3
    assert torch.allclose(delta[0][inside], delta[1][inside], atol=2e-3)
    # half the amount, half the change
    half, _ = ex.apply_exemplar_detail(blurred, 0.5)
    ratio = float((half.crops - blurred.crops).abs().sum() / (out.crops - blurred.crops).abs().sum())
    assert 0.4 < ratio < 0.6


def test_a_sharp_face_and_amount_zero_are_left_alone(heldout_face):
    out, report = ex.apply_exemplar_detail(heldout_face, 1.0)
    assert report.amount == [0.0] and out is heldout_face
    blurred = _blurred(heldout_face)
    out, report = ex.apply_exemplar_detail(blurred, 0.0)
    assert out is blurred and report.amount == []
    with pytest.raises(FaceRefineError, match="within 0..1"):
        ex.apply_exemplar_detail(blurred, 1.5)


def test_a_face_blurred_flat_does_not_get_pasted_on_eyes(heldout_face):
    """Eyes far sharper than the rest of the face look pasted on: past DEFICIT_CEILING the weight is 0 again."""
    flat = _blurred(heldout_face, 16.0)
    out, report = ex.apply_exemplar_detail(flat, 1.0)
    assert report.deficit[0] > ex.DEFICIT_CEILING[1] and report.amount == [0.0] and out is flat


def test_a_grey_face_stays_grey(heldout_face):
    grey = heldout_face.crops.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1).contiguous()
    blurred = _blurred(heldout_face.with_crops(grey, "grey"))
    out, report = ex.apply_exemplar_detail(blurred, 1.0)
    assert report.amount[0] > 0
    c = out.crops[0]
    assert float((c[0] - c[1]).abs().max()) < 1e-6 and float((c[1] - c[2]).abs().max()) < 1e-6


def test_the_lookup_applies_it_times_quality(heldout_face, tmp_path):
    """Through the lookup step with a random tiny IQPFR (it draws no detail): quality 0, fidelity 1 or exemplar
    detail 0 leave the lookup's own output; the amount is exemplar detail x quality, fading from fidelity 0.5
    to 1."""
    from tiny_models import make_tiny_iqpfr

    from facerefine.core.lookup.lookup import lookup
    from facerefine.core.lookup.options import LookupOptions
    from facerefine.models.restorers import load_restorer
    restorer = load_restorer(str(make_tiny_iqpfr(tmp_path / "tiny_iqpfr.safetensors")), "cpu")
    crops = _blurred(heldout_face)
    on, latent = lookup(crops, restorer, LookupOptions(quality=1.0))
    assert on.history[-1] == "exemplar-detail" and latent.extra["exemplar_detail"] == 1.0
    off, latent = lookup(crops, restorer, LookupOptions(quality=1.0, exemplar_detail=0.0))
    assert off.history[-1].startswith("lookup:") and latent.extra["exemplar_detail"] == 0.0
    q0, _ = lookup(crops, restorer, LookupOptions(quality=0.0))
    assert q0.history[-1].startswith("lookup:")
    w1, latent = lookup(crops, restorer, LookupOptions(quality=1.0, fidelity=1.0))  # fidelity 1: the input
    assert w1.history[-1].startswith("lookup:") and latent.extra["exemplar_detail"] == 0.0
    _, latent = lookup(crops, restorer, LookupOptions(quality=0.5, fidelity=0.75))
    assert latent.extra["exemplar_detail"] == pytest.approx(0.25)
    assert not torch.equal(on.crops, off.crops)


def test_video_frames_do_not_take_it():
    from facerefine.core.pipeline import RestoreOptions
    from facerefine.core.video.restore import SequenceRestorer
    options = RestoreOptions.from_values(restorer="none", exemplar_detail=1.0)
    assert options.lookup.exemplar_detail == 1.0
    assert SequenceRestorer(options).options.lookup.exemplar_detail == 0.0


def _write(path, sd, meta=None):
    from safetensors.torch import save_file
    save_file(sd, str(path), metadata=meta)
    return path


def test_a_broken_exemplar_file_gets_a_clear_message(tmp_path):
    good = ex.load_exemplars().state_dict()
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00")
    with pytest.raises(WeightsFormatError, match="not a valid safetensors"):
        ex.load_exemplars(str(tmp_path / "cut.safetensors"))
    wrong = _write(tmp_path / "wrong.safetensors", {"weight": torch.zeros(3)})
    with pytest.raises(WeightsFormatError, match="not a FaceRefine exemplar file"):
        ex.load_exemplars(str(wrong))
    nan = dict(good, descriptors=good["descriptors"].clone())
    nan["descriptors"][3, 5] = float("nan")
    with pytest.raises(WeightsFormatError, match="NaN"):
        ex.load_exemplars(str(_write(tmp_path / "nan.safetensors", nan)))
    offsets = good["offsets"].clone()
    offsets[-1] += 7
    with pytest.raises(WeightsFormatError, match="offsets"):
        ex.load_exemplars(str(_write(tmp_path / "offsets.safetensors", dict(good, offsets=offsets))))
    garbage = dict(good, blobs=torch.randint(0, 255, good["blobs"].shape, dtype=torch.uint8,
                                             generator=torch.Generator().manual_seed(0)))
    broken = ex.load_exemplars(str(_write(tmp_path / "garbage.safetensors", garbage)))
    with pytest.raises(WeightsFormatError, match="corrupt"):
        broken.image(0)


def test_a_missing_exemplar_file_turns_it_off_with_a_note(heldout_face, tmp_path, monkeypatch):
    """Exemplar detail is an extra: without its file the lookup still restores, and says why it is off."""
    from tiny_models import make_tiny_iqpfr

    from facerefine.core.lookup import lookup as lookup_mod
    from facerefine.core.lookup.options import LookupOptions
    from facerefine.errors import WeightsNotFoundError
    from facerefine.models.restorers import load_restorer

    def missing(*args, **kwargs):
        raise WeightsNotFoundError("exemplars.safetensors not found in weights/")
    monkeypatch.setattr(lookup_mod, "apply_exemplar_detail", missing)
    restorer = load_restorer(str(make_tiny_iqpfr(tmp_path / "tiny_iqpfr.safetensors")), "cpu")
    crops = _blurred(heldout_face)
    out, latent = lookup_mod.lookup(crops, restorer, LookupOptions(quality=1.0))
    off, _ = lookup_mod.lookup(crops, restorer, LookupOptions(quality=1.0, exemplar_detail=0.0))
    assert torch.equal(out.crops, off.crops) and latent.extra["exemplar_detail"] == 0.0
    assert "exemplar detail off: exemplars.safetensors not found" in latent.extra["note"]
