"""Lookup step with our tiny IQPFR model: batching, modes, training-free steering, training step, decode."""
import numpy as np
import pytest
import torch

from tiny_models import make_tiny_iqpfr, make_tiny_quality_condition, tiny_iqpfr_config

from facerefine.core.lookup.latent import concat_latents
from facerefine.core.lookup.lookup import decode, lookup
from facerefine.core.lookup.options import LookupOptions, SteerOptions
from facerefine.core.lookup.steering import budget_grid
from facerefine.core.types import FaceCrops, FaceInfo
from facerefine.errors import FaceRefineError, WrongArchitectureError
from facerefine.models.restorers import load_restorer


def make_crops(n, size=32, seed=0):
    """Smooth random 'faces' (low-frequency noise) with dummy geometry."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size // 8, size // 8, generator=g)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    info = FaceInfo(np.eye(2, 3), np.eye(2, 3), np.zeros((5, 2)), (0.0, 0.0, float(size), float(size)), 1.0, 0,
                    (size, size))
    return FaceCrops(x.contiguous(), (info,) * n, size)


def grey_critic(x):
    """A differentiable stand-in critic: prefers mid-grey, detailed faces (higher = better)."""
    contrast = (x[..., 1:, :] - x[..., :-1, :]).abs().mean((1, 2, 3))
    return contrast - ((x - 0.5) ** 2).mean((1, 2, 3))


# smaller than the tiny default (32^2 input, 8x8 tokens per branch): this file decodes many times
FAST = dict(img_size=32, ch_mult=(1, 2, 2), connect_list=("16", "32"))


# one torch thread: small ops on a shared CPU are faster without OpenMP spin-waits
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def iq_path(tmp_path_factory):
    return make_tiny_iqpfr(tmp_path_factory.mktemp("iq") / "tiny_iqpfr.safetensors", **FAST)


@pytest.fixture(scope="module")
def restorer(iq_path):
    return load_restorer(str(iq_path), "cpu")


def test_loaded_by_file_name_from_the_models_folder(iq_path, tmp_path, monkeypatch):
    folder = tmp_path / "home" / "facerestore_models"
    folder.mkdir(parents=True)
    (folder / "mine.safetensors").write_bytes(iq_path.read_bytes())
    monkeypatch.setenv("FACEREFINE_HOME", str(tmp_path / "home"))
    r = load_restorer("mine.safetensors")
    assert r.architecture == "IQPFR" and r.supports_quality and r.has_trained_conditioning


def test_batch_of_three_equals_three_single_calls(restorer):
    crops = make_crops(3)
    batched, lat = lookup(crops, restorer, LookupOptions(quality=0.7, fidelity=0.5, mode="trained"))
    options = LookupOptions(quality=0.7, fidelity=0.5, mode="trained")
    singles = [lookup(crops.select([i]), restorer, options) for i in range(3)]
    torch.testing.assert_close(batched.crops, torch.cat([s[0].crops for s in singles]), atol=1e-5, rtol=0)
    assert torch.equal(lat.indices, torch.cat([s[1].indices for s in singles]))
    merged = concat_latents([s[1] for s in singles])
    torch.testing.assert_close(merged.quantized, lat.quantized, atol=1e-5, rtol=0)
    assert set(merged.skip_features) == set(lat.skip_features) == {"16", "32"}
    assert batched.history[-1] == "lookup:IQPFR:trained"


def test_latent_contents_and_decode_reproduce_the_output(restorer):
    crops = make_crops(2, seed=1)
    out, lat = lookup(crops, restorer, LookupOptions(fidelity=0.3, mode="off"))
    assert lat.lq_features.shape == (2, 32, 8, 8)
    assert lat.quantized.shape == (2, 64, 8, 8)              # universal + HQ branch channels
    assert lat.indices.shape == (2, 128) and lat.logits.shape == (2, 128, 32)
    assert lat.fidelity == 0.3 and lat.architecture == "IQPFR" and lat.extra["mode"] == "off"
    with torch.inference_mode():
        again = decode(restorer, lat.quantized, lat.skip_features, lat.fidelity)
    assert torch.equal(again, out.crops)
    assert not torch.equal(decode(restorer, lat.quantized, lat.skip_features, 1.0), again)


def test_decode_passes_gradients_to_the_latent(restorer):
    """The refine step needs d(face)/d(latent) through decode, from a latent made under inference_mode."""
    _, lat = lookup(make_crops(1, seed=2), restorer, LookupOptions(mode="off"))
    z = lat.quantized.clone().requires_grad_(True)
    face = decode(restorer, z, lat.skip_features, 0.5)
    face.mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_channels_last_layout_gives_the_same_result(iq_path):
    """On CUDA codebook restorers run channels_last; the layout must not change the result."""
    crops = make_crops(2, seed=12)
    plain = load_restorer(str(iq_path))
    cl = load_restorer(str(iq_path)).to("cpu", channels_last=True)
    assert cl.channels_last and cl.module.encoder.blocks[0].weight.is_contiguous(memory_format=torch.channels_last)
    a, _ = lookup(crops, plain, LookupOptions(mode="off"))
    b, _ = lookup(crops, cl, LookupOptions(mode="off"))
    torch.testing.assert_close(a.crops, b.crops, atol=1e-5, rtol=0)


def test_off_input_size_is_resized_and_back(restorer):
    crops = make_crops(1, size=48, seed=3)
    out, _ = lookup(crops, restorer, LookupOptions(mode="off"))
    assert out.crops.shape == (1, 3, 48, 48) and out.crop_size == 48


def test_zero_initialised_conditioning_is_exactly_the_unconditioned_lookup(restorer):
    crops = make_crops(2, seed=4)
    off, _ = lookup(crops, restorer, LookupOptions(mode="off"))
    for q in (0.0, 1.0):
        trained, _ = lookup(crops, restorer, LookupOptions(quality=q, mode="trained"))
        assert torch.equal(trained.crops, off.crops)


def test_trained_conditioning_changes_the_lookup_with_quality(tmp_path):
    path = make_tiny_iqpfr(tmp_path / "cond.safetensors", seed=1, **FAST)
    r = load_restorer(str(path))
    with torch.no_grad():  # stand-in for trained conditioning weights
        g = torch.Generator().manual_seed(0)
        for p in r.codebook.quality_condition.to_film.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    crops = make_crops(2, seed=5)
    _, low = lookup(crops, r, LookupOptions(quality=0.0, mode="trained"))
    _, high = lookup(crops, r, LookupOptions(quality=1.0, mode="trained"))
    assert not torch.equal(low.indices, high.indices)


def test_steering_strength_zero_is_exactly_the_base_output(restorer):
    crops = make_crops(2, seed=6)
    base, base_lat = lookup(crops, restorer, LookupOptions(fidelity=0.5, mode="off"))
    steered, lat = lookup(crops, restorer,
                          LookupOptions(quality=0.0, fidelity=0.5, mode="training-free", critic=grey_critic))
    assert torch.equal(steered.crops, base.crops)
    assert torch.equal(lat.indices, base_lat.indices)


def test_steering_raises_the_critic_monotonically_with_strength(restorer):
    crops = make_crops(4, seed=7)
    means, per_face = [], []
    for strength in (0.0, 0.05, 0.25, 1.0):
        options = LookupOptions(quality=strength, fidelity=0.5, mode="training-free", critic=grey_critic,
                                steer=SteerOptions(rounds=1, top_k=8))
        out, lat = lookup(crops, restorer, options)
        scores = grey_critic(out.crops)
        means.append(float(scores.mean()))
        per_face.append(scores)
        if strength > 0:  # tokens only move to their top-k codes
            topk = lat.logits.topk(8, dim=-1).indices
            assert bool((topk == lat.indices.unsqueeze(-1)).any(-1).all())
    assert all(b >= a - 1e-6 for a, b in zip(means, means[1:])), means
    assert means[-1] > means[0] + 1e-4, means
    for a, b in zip(per_face, per_face[1:]):  # nested candidate grid: never worse per face in one round
        assert bool((b >= a - 1e-5).all())


def test_default_rounds_never_score_below_the_base(restorer):
    options = LookupOptions(quality=0.5, mode="training-free", critic=grey_critic)
    _, lat = lookup(make_crops(2, seed=8), restorer, options)
    assert bool((lat.extra["critic_after"] >= lat.extra["critic_before"]).all())
    assert lat.extra["mode"] == "training-free" and int(lat.extra["changed_tokens"].sum()) > 0


def test_critic_without_gradients_still_works(restorer):
    def flat_critic(x):
        with torch.no_grad():
            return grey_critic(x)
    options = LookupOptions(quality=0.3, mode="training-free", critic=flat_critic, steer=SteerOptions(rounds=1))
    _, lat = lookup(make_crops(1, seed=9), restorer, options)
    assert "no gradients" in " ".join(lat.extra["steer_notes"])
    assert bool((lat.extra["critic_after"] >= lat.extra["critic_before"]).all())


def test_budget_grid_is_nested():
    small, large = budget_grid(0.1, 256, 0.5), budget_grid(0.9, 256, 0.5)
    assert small == [1, 4] and large == [1, 4, 16, 64] and set(small) <= set(large)
    assert budget_grid(0.1, 256, 0.5, factor=2) == [1, 2, 4, 8]


def test_bad_arguments_are_user_errors(restorer):
    crops = make_crops(1)
    with pytest.raises(FaceRefineError, match="quality"):
        lookup(crops, restorer, LookupOptions(quality=1.5))
    with pytest.raises(FaceRefineError, match="mode"):
        lookup(crops, restorer, LookupOptions(mode="magic"))
    with pytest.raises(FaceRefineError, match="FACE_CROPS"):
        lookup(crops.crops, restorer)
    empty, lat = lookup(FaceCrops.empty(64), restorer)
    assert empty.is_empty and len(lat) == 0


def test_default_compact_config_fits_the_size_budget():
    from facerefine.lab.train.iqpfr import parameter_megabytes
    from facerefine.models.arch.iqpfr import IQPFR, IQPFRConfig
    assert parameter_megabytes(IQPFR(IQPFRConfig())) <= 40.0


def test_iqpfr_file_without_config_is_a_clear_error(tmp_path):
    path = make_tiny_iqpfr(tmp_path / "bare.pth", **FAST)
    with pytest.raises(WrongArchitectureError, match="config"):
        load_restorer(str(path))


def test_conditioning_file_passed_as_restorer_is_explained(tmp_path):
    path = make_tiny_quality_condition(tmp_path / "cond.safetensors")
    with pytest.raises(WrongArchitectureError, match="conditioning"):
        load_restorer(str(path))
