"""Aligned-face data for training: FFHQ framing, the London held-out guard, the cache and seeded batches."""
import json

import numpy as np
import pytest
import torch

from facerefine.lab.train import data as D
from facerefine.errors import FaceRefineError


def test_similarity_maps_eyes_onto_template():
    src = np.array([[30.0, 50.0], [70.0, 40.0]])
    m = D.similarity_from_eyes(src, 128)
    mapped = (m[:, :2] @ src.T).T + m[:, 2]
    assert np.allclose(mapped, D.FFHQ_EYES * 128, atol=1e-3)


def test_cache_is_built_once_and_batches_are_seeded(tmp_path):
    from PIL import Image
    files = []
    for i in range(3):
        p = tmp_path / f"f{i}.png"
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(p)
        files.append(p)
    cache = tmp_path / "c" / "faces.npy"
    arr = D.build_cache(files, 16, cache, "ffhq", log=None)
    assert arr.shape == (3, 16, 16, 3) and int(arr[2].mean()) == 120
    stamp = cache.stat().st_mtime_ns
    D.build_cache(files, 16, cache, "ffhq", log=None)
    assert cache.stat().st_mtime_ns == stamp  # reused
    assert json.loads(cache.with_suffix(".json").read_text())["size"] == 16
    a, b = D.FaceBatches(arr, 4, seed=1), D.FaceBatches(arr, 4, seed=1)
    xa, ia = a.next()
    xb, ib = b.next()
    assert torch.equal(xa, xb) and torch.equal(ia, ib) and xa.shape == (4, 3, 16, 16)
    state = a.state()
    nxt = a.next()[0]
    a.set_state(state)
    assert torch.equal(a.next()[0], nxt)


def test_london_heldout_is_refused_for_training(london_dir):
    from facerefine.lab import datasets
    split = datasets.london_split(london_dir)
    assert D.resolve_sources([str(p) for p in split["train_neutral"][:2]])
    with pytest.raises(FaceRefineError, match="held-out"):
        D.resolve_sources([str(london_dir / "neutral")])
    assert D.resolve_sources([str(london_dir / "neutral")], allow_heldout=True)


def test_compact_sources_exclude_heldout(london_dir, utkface_dir):
    from facerefine.lab import datasets
    heldout = set(datasets.heldout_identities())
    srcs = D.compact_sources()
    london = [p for p in srcs if "london" in p.parts]
    assert london and not any(datasets.london_identity(p) in heldout for p in london)
    assert any(p.name.endswith(".chip.jpg") for p in srcs)


def test_london_alignment_puts_pupils_on_template(london_dir):
    from facerefine.lab import datasets
    p = datasets.london_split(london_dir)["train_neutral"][0]
    face = D.align_face(p, 128)
    assert face.shape == (128, 128, 3)
    m = D.similarity_from_eyes(D.read_pupils(D.london_sidecar(p)), 128)
    pupils = (m[:, :2] @ D.read_pupils(D.london_sidecar(p)).T).T + m[:, 2]
    assert np.allclose(pupils, D.FFHQ_EYES * 128, atol=1e-3)
    smiling = datasets.london_split(london_dir)["train_smiling"][0]
    assert D.london_sidecar(smiling).parent.name == "neutral"
