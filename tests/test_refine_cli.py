"""Full chain crop -> lookup -> refine -> paste from the CLI, with tiny models and a real face."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import refine_fixtures as fx  # noqa: E402


def _cli(*args, env):
    proc = subprocess.run([sys.executable, "-m", "facerefine", *args, "--json"], capture_output=True, text=True,
                          env=env, timeout=900)
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_restore_with_refine_and_reference(tmp_path, london_dir):
    from facexlib.recognition.arcface_arch import Backbone

    from facerefine.models.arch.latent_prior import save_latent_prior
    env = dict(os.environ, OMP_NUM_THREADS="1")
    home = Path(env["FACEREFINE_HOME"])
    restorer = fx.tiny_restorer_path(str(tmp_path))
    # a latent prior for the tiny restorer's latent, and a random ArcFace IR-SE50 in the registry's folder
    lq = fx.make_faces(1, 256)
    _, latent = fx.lookup_latent(lq, fx.load_tiny_restorer(tmp_path))
    prior = save_latent_prior(fx.tiny_prior(latent), home / "facerefine" / "tiny_prior.safetensors")
    (home / "facedetection").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(Backbone(50, 0.6, "ir_se").state_dict(), home / "facedetection" / "recognition_arcface_ir_se50.pth")

    people = sorted((london_dir / "neutral").glob("*.jpg"))
    image = people[0]
    reference = london_dir / "smiling" / (image.stem.split("_")[0] + "_08.jpg")  # same person, smiling
    if not reference.is_file():
        pytest.skip("no smiling photo of the same person")
    base = ["restore", str(image), "--restorer", restorer, "--crop-size", "256", "--device", "cpu"]
    code, plain, err = _cli(*base, "-o", str(tmp_path / "lookup.png"), env=env)
    assert code == 0, err
    code, out, err = _cli(*base, "-o", str(tmp_path / "refined.png"), "--refine-steps", "2",
                          "--identity-strength", "1.0", "--reference", str(reference), "--latent-prior", str(prior),
                          env=env)
    assert code == 0, err
    history = out["results"][0]["history"]
    assert any(h.startswith("refine:dpmpp_2m") for h in history) and any(h.startswith("lookup") for h in history)
    assert "refine" in out["timings"]
    from facerefine.core.image_io import load_image
    a, b = load_image(tmp_path / "lookup.png").image, load_image(tmp_path / "refined.png").image
    assert a.shape == b.shape and not torch.equal(a, b)

    # a reference photo with no face is a clear error, not a crash
    blank = tmp_path / "blank.png"
    from facerefine.core.image_io import save_image
    save_image(blank, torch.full((1, 200, 200, 3), 0.5))
    code, out, err = _cli(*base, "-o", str(tmp_path / "x.png"), "--refine-steps", "2", "--reference", str(blank),
                          "--latent-prior", "none", env=env)
    assert code == 1 and "no face found in the reference" in out["error"]
