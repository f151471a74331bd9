"""Issue 18: a grayscale photo comes back grayscale (max channel difference <= 1 grey level) from the core
pipeline, the restore CLI, the ComfyUI all-in-one node and the app service; ``allow_color`` keeps colour."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from facerefine.core.grayscale import is_grayscale, keep_grayscale, luminance_only

REPO = Path(__file__).resolve().parent.parent
RESTORER = "facerefine-compact"      # the embedded restorer: it colours what it restores
pytestmark = pytest.mark.usefixtures("one_thread")


def _max_channel_diff(rgb_u8: np.ndarray) -> int:
    a = rgb_u8.astype(np.int16)[..., :3]
    return int((a.max(-1) - a.min(-1)).max())


@pytest.fixture(scope="module")
def gray_face(tmp_path_factory):
    """A real London face as an 8-bit grayscale RGB photo (384², face about 200 px wide), saved as PNG."""
    from PIL import Image
    src = REPO.parent / "shared" / "data" / "london" / "neutral" / "005_03.jpg"
    if not src.is_file():
        pytest.skip("../shared/data/london not present")
    with Image.open(src) as im:
        g = im.convert("L").resize((384, 384), Image.BICUBIC).convert("RGB")
    path = tmp_path_factory.mktemp("gray") / "bw.png"
    g.save(path)
    return path, np.asarray(g)


def test_detection_and_luminance_only():
    gen = torch.Generator().manual_seed(0)
    colour = torch.rand(2, 64, 64, 3, generator=gen)
    gray = colour.mean(-1, keepdim=True).expand(-1, -1, -1, 3).clone()
    gray[1, 3, 3] += torch.tensor([0.5, 0.0, 0.0])          # one stray coloured pixel: still grayscale
    jpeg_like = gray.clone()
    jpeg_like[0] += (torch.rand(64, 64, 3, generator=gen) - 0.5) / 255   # chroma noise below a grey level
    assert is_grayscale(gray).tolist() == [True, True]
    assert is_grayscale(jpeg_like).tolist() == [True, True]
    assert is_grayscale(colour).tolist() == [False, False]
    out = keep_grayscale(torch.cat([gray[:1], colour[:1]]), torch.cat([colour[:1], colour[:1]]))
    assert torch.equal(out[0, ..., 0], out[0, ..., 1]) and torch.equal(out[0, ..., 1], out[0, ..., 2])
    assert torch.equal(out[1], colour[0])                    # a colour input keeps the restorer's colours
    assert torch.equal(keep_grayscale(gray, colour, allow_color=True), colour)
    assert torch.allclose(luminance_only(colour)[..., 0], (colour * torch.tensor([0.299, 0.587, 0.114])).sum(-1))


def test_pipeline_keeps_gray_and_allow_color_does_not(gray_face):
    from facerefine.core.pipeline import RestoreOptions, restore_images
    _, pixels = gray_face
    image = torch.from_numpy(pixels.copy()).float().div(255).unsqueeze(0)
    res = restore_images(image, RestoreOptions.from_values(restorer=RESTORER, device="cpu"))
    assert len(res.face_crops) == 1
    out = (res.images[0].numpy() * 255).round().astype(np.uint8)
    assert _max_channel_diff(out) <= 1
    assert np.abs(out.astype(int) - pixels.astype(int)).max() > 2        # the face was restored, not copied
    tinted = restore_images(image, RestoreOptions.from_values(restorer=RESTORER, device="cpu", allow_color=True))
    assert _max_channel_diff((tinted.images[0].numpy() * 255).round().astype(np.uint8)) > 1


def test_restore_cli_keeps_gray(gray_face, tmp_path):
    from PIL import Image
    path, _ = gray_face
    env = {**os.environ, "FACEREFINE_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "facerefine", "restore", str(path), "-o", str(tmp_path),
                          "--restorer", RESTORER, "--device", "cpu", "--json"],
                         capture_output=True, text=True, env=env, cwd=REPO.parent)
    assert run.returncode == 0, run.stderr
    (result,) = json.loads(run.stdout.strip().splitlines()[-1])["results"]
    with Image.open(result["output"]) as im:
        assert _max_channel_diff(np.asarray(im.convert("RGB"))) <= 1


def test_app_service_keeps_gray(gray_face):
    from facerefine.ui import service
    _, pixels = gray_face
    outcome = service.restore_array(pixels.copy(), service.Settings(restorer=RESTORER, device="cpu"))
    assert outcome.ok and outcome.faces == 1
    assert _max_channel_diff(outcome.image) <= 1


def test_comfy_node_keeps_gray(gray_face, monkeypatch):
    from facerefine.nodes import all_in_one_nodes as node_mod
    from facerefine.nodes import conventions as rt
    assert "allow_color" in node_mod.FaceRefineRestore.INPUT_TYPES()["optional"]
    monkeypatch.setattr(rt, "weights_path", lambda name, kind: name)   # no ComfyUI folders: registry names
    _, pixels = gray_face
    image = torch.from_numpy(pixels.copy()).float().div(255).unsqueeze(0)
    result = node_mod.FaceRefineRestore().restore(image, restorer=RESTORER, device="cpu")
    out = (result["result"] if isinstance(result, dict) else result)[0]
    assert _max_channel_diff((out[0].numpy() * 255).round().astype(np.uint8)) <= 1
