"""Both offline metrics follow face quality on held-out London identities.

Six held-out faces (512 px central crops), five severity levels per degradation kind
(blur, downscale, noise, JPEG, combined): the mean normalised score must fall with
severity (Spearman rho >= 0.9 against severity) and the clean faces must score above
every degraded level. `python -m facerefine.lab.sensitivity --faces 20` runs the
same check on all 20 held-out identities.
"""
import pytest

from facerefine.core.score import get_metric
from facerefine.lab.sensitivity import (KINDS, degrade_level, degraded_sets, evaluate, heldout_faces,
                                                spearman)


def test_spearman_helper():
    assert spearman([5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5]) == pytest.approx(1.0)


def test_degradations_are_deterministic_and_grow(london_dir):
    import torch
    faces = heldout_faces(1, 128, london_dir)
    for kind in KINDS:
        a, b = degrade_level(faces, kind, 3), degrade_level(faces, kind, 3)
        assert torch.equal(a, b)
        err = [float((degrade_level(faces, kind, lv) - faces).abs().mean()) for lv in (1, 3, 5)]
        assert err[0] < err[2], kind


@pytest.fixture(scope="module")
def six_faces():
    from facerefine.lab.datasets import shared_data_dir
    root = shared_data_dir() / "london"
    if not root.is_dir():
        pytest.skip("../shared/data/london not present")
    faces = heldout_faces(6, 512, root)
    return faces, degraded_sets(faces)


@pytest.mark.parametrize("name", ["face-niqe", "piqe"])
def test_offline_metric_falls_with_severity(name, six_faces):
    faces, sets = six_faces
    result = evaluate(get_metric(name, "cpu"), faces, sets=sets)
    print(f"\n{name}: clean {result['clean_mean']:.4f}")  # shown with pytest -s
    for kind, r in result["kinds"].items():
        print(f"  {kind:9s} {r['means']} rho={r['rho_vs_severity']}")
    for kind, r in result["kinds"].items():
        assert r["rho_vs_severity"] >= 0.9, (name, kind, r)
        assert r["clean_above_all"], (name, kind, result["clean_mean"], r)
    assert result["pass"]
