"""Compact v2 (IQPFRv2): residual fidelity, fully convolutional sizes, safe config, training resume, export."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from facerefine.core.lookup.options import LookupOptions
from facerefine.errors import FaceRefineError, WrongArchitectureError
from facerefine.models.arch.iqpfr_v2 import IQPFRv2, IQPFRv2Config, read_config

TINY = IQPFRv2Config(widths=(16, 16, 32), enc_blocks=(1, 1, 1), dec_blocks=(1, 1, 1), emb_dim=8,
                     codebook_size=16, dim_embd=16, n_head=2, n_layers=1, quality_hidden=8)
WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "facerefine_compact_v2.safetensors"


def _random_model(seed: int = 0) -> IQPFRv2:
    torch.manual_seed(seed)
    model = IQPFRv2(TINY)
    with torch.no_grad():  # zero-initialised heads would make every output equal the input
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _crops(n: int, size: int):
    from facerefine.core.types import FaceCrops, FaceInfo
    torch.manual_seed(1)
    crops = torch.rand(n, 3, size, size)
    eye = torch.eye(2, 3)
    faces = tuple(FaceInfo(bbox=(0.0, 0.0, 1.0, 1.0), landmarks=np.zeros((5, 2), np.float32), score=1.0,
                           image_index=i, image_size=(size, size), affine=eye.numpy(), inverse_affine=eye.numpy())
                  for i in range(n))
    return FaceCrops(crops=crops, faces=faces, crop_size=size)


@pytest.fixture
def restorer(tmp_path):
    from facerefine.models.restorers import load_restorer
    path = _random_model().save(tmp_path / "v2.safetensors")
    return load_restorer(str(path))


def test_fidelity_one_returns_input_and_every_step_moves_the_output(restorer):
    from facerefine.core.lookup.lookup import lookup
    from facerefine.models.arch.iqpfr_v2 import correction_strength
    crops = _crops(2, 256)
    outs = {w: lookup(crops, restorer, LookupOptions(quality=1.0, fidelity=w))[0].crops
            for w in (0.0, 0.25, 0.5, 0.75, 1.0)}
    assert (outs[1.0] - crops.crops).abs().mean() * 255 <= 0.5
    gap = {w: float((out - crops.crops).abs().mean()) for w, out in outs.items()}
    ws = sorted(gap)
    assert all(gap[a] > gap[b] for a, b in zip(ws, ws[1:])), gap  # further from the input as w falls
    assert all((outs[a] - outs[b]).abs().max() > 1e-3 for a, b in zip(ws, ws[1:]))  # five different outputs
    assert correction_strength(0.5) == 1.0 and correction_strength(1.0) == 0.0  # the default applies it once


@pytest.mark.parametrize("size", [256, 512])
def test_runs_at_crop_size_with_batch_equal_single(restorer, size):
    from facerefine.core.lookup.lookup import lookup
    crops = _crops(3, size)
    batch, latent = lookup(crops, restorer, LookupOptions(quality=0.7, fidelity=0.3, batch_size=3))
    assert batch.crops.shape == (3, 3, size, size) and batch.crops.dtype == torch.float32
    assert 0.0 <= float(batch.crops.min()) and float(batch.crops.max()) <= 1.0
    assert latent.quantized.shape[-1] == size // 16  # token grid at 1/16 of the crop: no fixed bottleneck
    options = LookupOptions(quality=0.7, fidelity=0.3)
    single = torch.cat([lookup(crops.select([i]), restorer, options)[0].crops for i in range(3)])
    assert torch.allclose(batch.crops, single, atol=1e-5)


def test_quality_value_reaches_the_output(restorer):
    from facerefine.core.lookup.lookup import lookup
    crops = _crops(1, 256)
    low, _ = lookup(crops, restorer, LookupOptions(quality=0.0, fidelity=0.0))
    high, _ = lookup(crops, restorer, LookupOptions(quality=1.0, fidelity=0.0))
    assert (low.crops - high.crops).abs().mean() > 1e-4


def test_decoding_the_latent_again_gives_the_lookup_output(restorer):
    from facerefine.core.lookup.lookup import decode, lookup
    crops = _crops(1, 256)
    out, latent = lookup(crops, restorer, LookupOptions(quality=0.4, fidelity=0.2))
    with torch.inference_mode():
        again = decode(restorer, latent.quantized, latent.skip_features, latent.fidelity)
    assert torch.allclose(again, out.crops, atol=1e-5)


def test_odd_sizes_are_refused_clearly():
    with pytest.raises(ValueError, match="multiple of 16"):
        _random_model()(torch.zeros(1, 3, 100, 100))


def test_header_config_is_validated_before_building(tmp_path):
    from safetensors.torch import save_file
    huge = tmp_path / "huge.safetensors"
    save_file({"codebook": torch.zeros(1)}, str(huge),
              metadata={"format": "facerefine-iqpfr-v2",
                        "config": '{"widths": [100000, 100000, 100000], "dim_embd": 65536}'})
    start = time.perf_counter()
    with pytest.raises(WrongArchitectureError, match="outside"):
        read_config(huge)
    assert time.perf_counter() - start < 1.0
    for bad, message in (("{not json", "not valid JSON"), ('{"layers_galore": 3}', "unknown keys")):
        save_file({"codebook": torch.zeros(1)}, str(huge), metadata={"format": "facerefine-iqpfr-v2", "config": bad})
        with pytest.raises(WrongArchitectureError, match=message):
            read_config(huge)


def test_wrong_shapes_name_the_file(tmp_path):
    model = _random_model()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["codebook"] = torch.zeros(2, 3, 8)
    from safetensors.torch import save_file
    path = tmp_path / "bad_v2.safetensors"
    save_file(sd, str(path), metadata={"format": "facerefine-iqpfr-v2", "config": TINY.to_json()})
    with pytest.raises(WrongArchitectureError, match="bad_v2.safetensors"):
        IQPFRv2.from_file(path)


def test_export_refuses_files_over_40_mb(tmp_path):
    big = IQPFRv2Config(widths=(384, 384, 512), enc_blocks=(2, 2, 2), dec_blocks=(2, 2, 2))
    with pytest.raises(ValueError, match="40 MB"):
        IQPFRv2(big).save(tmp_path / "big.safetensors")
    assert not list(tmp_path.iterdir())


def _tiny_train_config(tmp_path, shared_data):
    from facerefine.lab.train.compact_v2 import V2TrainConfig
    return V2TrainConfig(out_dir=str(tmp_path / "run"), sources=[["ffhq256", 256, 1.0]], patch=32, batch_size=2,
                         steps=6, warmup=2, checkpoint_every=2, threads=1,
                         model={k: list(v) if isinstance(v, tuple) else v for k, v in TINY.__dict__.items()})


@pytest.fixture
def shared_data():
    from facerefine.lab import datasets
    root = datasets.shared_data_dir()
    if not (root / "ffhq256").is_dir():
        pytest.skip(f"shared faces not found at {root}")
    return root


def test_training_resumes_bit_for_bit(tmp_path, shared_data, monkeypatch):
    from facerefine.lab.train import compact_v2 as train_v2
    # a small face pool keeps the cache quick; resume equality does not depend on the pool size
    real_paths = train_v2.source_paths
    monkeypatch.setattr(train_v2, "source_paths", lambda names: real_paths(names)[:24])
    straight = _tiny_train_config(tmp_path / "a", shared_data)
    train_v2.train(straight, log=lambda m: None)
    resumed = _tiny_train_config(tmp_path / "b", shared_data)
    train_v2.train(resumed, log=lambda m: None, stop_after=3)
    summary = train_v2.train(resumed, log=lambda m: None)
    assert summary["step"] == 6
    a = torch.load(Path(straight.out_dir) / "checkpoint.pt", weights_only=True)
    b = torch.load(Path(resumed.out_dir) / "checkpoint.pt", weights_only=True)
    for key in ("model", "ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), name
    exported = train_v2.export(resumed)
    assert IQPFRv2.from_file(exported).config == TINY


def test_same_step_gives_the_same_training_batch(tmp_path, shared_data, monkeypatch):
    from facerefine.lab.train import compact_v2 as train_v2
    cfg = _tiny_train_config(tmp_path, shared_data)
    pools = [(np.random.default_rng(0).integers(0, 255, (4, 256, 256, 3), dtype=np.uint8), 1.0)]
    a, b = train_v2.make_batch(cfg, pools, 5), train_v2.make_batch(cfg, pools, 5)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], train_v2.make_batch(cfg, pools, 6)[0])


def test_held_out_london_identities_are_refused(shared_data):
    from facerefine.lab import datasets
    from facerefine.lab.train import compact_v2 as train_v2
    if not (shared_data / "london").is_dir():
        pytest.skip("London faces absent")
    names = {datasets.london_identity(p) for p in train_v2.source_paths(["london-train"])}
    assert names and not names & set(datasets.heldout_identities())
    with pytest.raises(FaceRefineError, match="held-out"):
        train_v2.source_paths(["london/neutral"])


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="shipped compact v2 weights not present")
def test_shipped_model_quality_slider_changes_a_london_face():
    from facerefine.core.lookup.lookup import lookup
    from facerefine.models.restorers import load_restorer
    from facerefine.core.types import FaceCrops
    from facerefine.lab import datasets
    from facerefine.lab.train.data import align_face
    split = datasets.london_split()
    if not split["heldout_neutral"]:
        pytest.skip("London faces absent")
    face = align_face(split["heldout_neutral"][0], 512)
    base = _crops(1, 512)
    crops = FaceCrops(crops=torch.from_numpy(face).permute(2, 0, 1)[None].float() / 255, faces=base.faces,
                      crop_size=512)
    restorer = load_restorer(str(WEIGHTS))
    low, _ = lookup(crops, restorer, LookupOptions(quality=0.0, fidelity=0.0))
    high, _ = lookup(crops, restorer, LookupOptions(quality=1.0, fidelity=0.0))
    face = (slice(None), slice(None), slice(150, 440), slice(130, 382))  # the face inside the 512² FFHQ frame
    assert (low.crops - high.crops)[face].abs().mean() * 255 >= 1.5
    same, _ = lookup(crops, restorer, LookupOptions(quality=1.0, fidelity=1.0))
    assert (same.crops - crops.crops).abs().mean() * 255 <= 0.5
