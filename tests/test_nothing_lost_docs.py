"""Issue 16, item 15: what the README and docs say is what the program does. Each test reads the claim
from the document and checks it against a real run, so the two cannot drift apart again."""
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli_json

REPO = Path(__file__).resolve().parent.parent


_run = run_cli_json


@pytest.fixture
def portrait(tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    path = tmp_path / "astronaut.png"
    Image.fromarray(skimage_data.astronaut()).save(path)  # public domain, one face
    return path


def _slider_bullet() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    bullet = text.split("- **Quality slider (IQPFR).**", 1)[1].split("\n- **", 1)[0]
    return re.sub(r"\s+", " ", bullet)


def test_readme_quality_slider_claim_for_the_compact_model_holds(capsys, tmp_path, portrait):
    from facerefine.models.registry import EMBEDDED_RESTORER
    images = []
    for quality in ("0", "1"):
        code, res, err = _run(capsys, "restore", portrait, "-o", tmp_path / f"q{quality}.png", "--restorer",
                              EMBEDDED_RESTORER, "--quality", quality, "--device", "cpu", "--lookup-mode",
                              "trained")
        assert code == 0, err
        images.append(np.asarray(Image.open(res["results"][0]["output"])).astype(np.float64))
    diff = np.abs(images[0] - images[1]).mean(axis=2)
    ys, xs = np.nonzero(diff)
    # in 8-bit levels, over the pasted face (the box where the outputs differ at all), as the README states it
    change = float(diff[ys.min():ys.max() + 1, xs.min():xs.max() + 1].mean()) if len(ys) else 0.0
    bullet = _slider_bullet()
    compact = [s for s in re.split(r"(?<=\.) ", bullet) if "compact model" in s]
    assert compact, "the README's quality-slider bullet must say what the slider does with the compact model"
    if "no visible effect" in " ".join(compact):
        assert change < 0.5, f"README says no visible effect, but quality 0 vs 1 changes {change:.3f} levels"
    else:
        assert change >= 0.5, f"README says the slider works with the compact model; it changes {change:.3f}"


def test_id_model_none_runs_the_prior_alone_as_documented(capsys, tmp_path, portrait):
    doc = re.sub(r"\s+", " ", (REPO / "docs" / "refine.md").read_text(encoding="utf-8"))
    assert "--id-model none" in doc and "runs the prior alone" in doc
    code, res, err = _run(capsys, "restore", portrait, "-o", tmp_path / "out", "--restorer", "facerefine-compact",
                          "--latent-prior", "facerefine-compact-prior", "--refine-steps", "2", "--id-model", "none",
                          "--device", "cpu")
    assert code == 0, err
    history = res["results"][0]["history"]
    assert any(h.startswith("refine") for h in history), history


def test_readme_layout_names_the_lab_package():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    layout = re.sub(r"\s+", " ", text.split("- Layout:", 1)[1].split("\n- ", 1)[0])
    for step in ("train", "eval", "bench"):
        assert (REPO / "lab" / step).exists() and not (REPO / "core" / step).exists()
    core_part = layout.split("`core/`", 1)[1].split("`models/`", 1)[0]
    assert "train" not in core_part and "`lab/`" in layout
