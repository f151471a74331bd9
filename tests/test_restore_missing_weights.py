"""Issue 18: one behaviour per run. Every weights file a restore run needs (detector, restorer, identity
network, latent prior) is resolved before the first image: a missing one stops a folder run at once with
one clear message, exit code non-zero and no output written."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two real London faces (256²) in one input folder."""
    from PIL import Image
    src = REPO.parent / "shared" / "data" / "london" / "neutral"
    files = sorted(src.glob("*.jpg"))[:2] if src.is_dir() else []
    if len(files) < 2:
        pytest.skip("../shared/data/london not present")
    d = tmp_path_factory.mktemp("inputs")
    for f in files:
        with Image.open(f) as im:
            im.convert("RGB").resize((256, 256), Image.BICUBIC).save(d / f"{f.stem}.png")
    return d


def _restore(*args):
    env = {**os.environ, "FACEREFINE_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "facerefine", "restore", *args, "--device", "cpu"],
                          capture_output=True, text=True, env=env, cwd=REPO.parent)


@pytest.mark.parametrize("missing", [
    ("--refine-steps", "2", "--id-model", "{tmp}/arcface_missing.pth"),                 # identity network
    ("--refine-steps", "2", "--latent-prior", "{tmp}/prior_missing.safetensors"),       # latent prior
    ("--restorer", "{tmp}/restorer_missing.pth"),                                      # restorer
    ("--detector", "retinaface"),                                                       # detector (not shipped)
], ids=["id-model", "latent-prior", "restorer", "detector"])
def test_missing_weights_stop_the_folder_run_before_any_output(folder, tmp_path, missing):
    out = tmp_path / "out"
    args = [a.format(tmp=tmp_path) for a in missing]
    named = "detection_resnet50" if missing[0] == "--detector" else Path(args[-1]).name  # the missing file
    if "--restorer" not in args:
        args += ["--restorer", "facerefine-compact"]
    run = _restore(str(folder), "-o", str(out), *args)
    assert run.returncode != 0
    errors = [ln for ln in run.stderr.splitlines() if ln.lower().startswith("error")]
    assert len(errors) == 1, run.stderr                  # one message, not one per image
    assert named.lower() in run.stderr.lower(), run.stderr
    written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert written == []
    assert len(list(folder.iterdir())) == 2              # inputs untouched, nothing written beside them


def test_build_steps_loads_identity_network_and_prior_before_any_image():
    from facerefine.core.pipeline import RestoreOptions, build_steps
    steps = build_steps(RestoreOptions.from_values(restorer="facerefine-compact", refine_steps=2,
                                                   identity_strength=0.5, id_model="dlib", device="cpu"))
    assert steps.refine is not None
    assert steps.refine.id_model is not None           # loaded now, not at the first face
    assert steps.refine.prior is not None              # the compact restorer's paired prior


def test_every_image_gets_the_same_treatment(folder, tmp_path):
    out = tmp_path / "out"
    run = _restore(str(folder), "-o", str(out), "--restorer", "facerefine-compact", "--refine-steps", "1",
                   "--id-model", "dlib", "--json")
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout.strip().splitlines()[-1])["results"]
    assert len(results) == 2 and all(r["faces"] == 1 for r in results)
    assert results[0]["history"] == results[1]["history"] and "refine" in " ".join(map(str, results[0]["history"]))
    assert all(Path(r["output"]).is_file() for r in results)
    assert np.all([not w.startswith("no identity") for r in results for w in r["warnings"]])
