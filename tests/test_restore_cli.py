"""restore CLI: the README's sample run, per-image failures, never overwriting inputs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import cv2

REPO = Path(__file__).resolve().parent.parent


def _cli(*args):
    env = {**os.environ, "FACEREFINE_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "facerefine", *args, "--json"], capture_output=True, text=True,
                         env=env, cwd=REPO.parent)
    return out.returncode, json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_sample_plus_corrupt_file_keeps_going_and_never_overwrites(tmp_path):
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    code, out, err = _cli("restore", str(corrupt), "--sample", "-o", str(tmp_path), "--restorer", "none")
    assert code == 1, err
    assert [f["input"] for f in out["failed"]] == [str(corrupt)] and out["failed"][0]["error"]
    (done,) = out["results"]
    assert done["faces"] == 1
    sample_in, sample_out = Path(done["input"]), Path(done["output"])
    assert sample_in != sample_out and sample_out.name == "sample_astronaut_input_restored.png"
    a, b = cv2.imread(str(sample_in)), cv2.imread(str(sample_out))
    assert a.shape == b.shape == (512, 512, 3)
    # no restorer: outside the face the pixels are untouched
    assert np.mean(a == b) > 0.9
    assert corrupt.read_bytes().endswith(b"not really a png")  # input left as it was


def test_no_inputs_is_a_clear_error(tmp_path):
    code, out, _ = _cli("restore", "-o", str(tmp_path))
    assert code == 1 and "no input images" in out["error"]
