"""lab/eval/real_lq_grid.py: the blurriest real photos, through the whole chain, in one grid."""
import json

import numpy as np
import pytest

from facerefine.lab.datasets import shared_data_dir


@pytest.fixture
def utkface():
    folder = shared_data_dir() / "utkface"
    if not folder.is_dir():
        pytest.skip("../shared/data/utkface is not here")
    return folder


def test_picks_the_blurriest_files_in_a_fixed_order(utkface):
    import cv2

    from facerefine.lab.eval.real_lq_grid import pick_blurriest
    picked = pick_blurriest(utkface, 3, 40)
    assert picked == pick_blurriest(utkface, 3, 40) and len(picked) == 3

    def sharpness(p):
        g = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        h, w = g.shape
        return cv2.Laplacian(g[h // 5: 4 * h // 5, w // 5: 4 * w // 5], cv2.CV_32F).var()
    rest = [p for p in sorted(utkface.glob("*.jpg"))[:40] if p not in picked]
    assert max(sharpness(p) for p in picked) <= min(sharpness(p) for p in rest)


def test_grid_has_a_row_per_face_and_a_column_per_method(utkface, tmp_path):
    import cv2

    from facerefine.lab.eval.real_lq_grid import run
    record = run(tmp_path / "grid.jpg", ["facerefine-compact-v2"], faces=2, pool=20, tile=64, folder=str(utkface))
    grid = cv2.imread(str(tmp_path / "grid.jpg"))
    assert grid.shape[:2] == (2 * 64, 3 * 64)
    assert record["columns"] == ["LQ (bicubic)", "classical", "facerefine-compact-v2"]
    assert json.loads((tmp_path / "grid.json").read_text())["faces"] == record["faces"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.jpg", "grid.json"]  # no temp file left
    lq, restored = grid[:, :64].astype(float), grid[:, 128:].astype(float)
    assert np.abs(lq - restored).mean() > 0.5 or record["notes"]  # restored, or a note says no face was found
