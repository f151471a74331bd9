"""Every example workflow, and the negative cases, on the real ComfyUI server.

The workflows are stored in the UI format (what ComfyUI's template browser loads); each is
converted to the API format with comfy_engine.ui_to_api and submitted through /prompt, then
/history is read and the outputs are checked. Inputs: the public-domain skimage astronaut
(NASA) as the example photo; tiny random weights of the real architectures, saved under the
file names the workflows use, in the folders our pack registers with ComfyUI.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest

import comfy_engine

pytestmark = [pytest.mark.engine]

REPO = Path(__file__).resolve().parent.parent
WORKFLOW_DIR = REPO / "example_workflows"
WORKFLOWS = sorted(WORKFLOW_DIR.glob("*.json"))
EXAMPLE_IMAGE = "facerefine_example.png"
EXAMPLE_VIDEO = "facerefine_example.mp4"
VIDEO_FRAMES, VIDEO_FPS = 6, 12
RESTORER_FILE = "facerefine_compact.safetensors"
# CPU-sized settings for the tests (the templates keep the user-facing defaults)
TEST_WIDGETS = {"FaceRefineIdentityLatentRefine": {"steps": 2, "sampler": "euler"},
                "FaceRefineRestore": {"refine_steps": 0}}

_PREPARED: dict = {}


def _astronaut() -> np.ndarray:
    from skimage import data
    return data.astronaut()


def prepare_server():
    """The session's server with the example image and tiny weights in place (once per run)."""
    server = comfy_engine.get_server()
    if "done" not in _PREPARED:
        from PIL import Image
        Image.fromarray(_astronaut()).save(server.input_dir / EXAMPLE_IMAGE)
        _write_example_video(server.input_dir / EXAMPLE_VIDEO)
        _place_tiny_weights(server.models)
        _PREPARED["done"] = True
    return server


def _video_frames() -> np.ndarray:
    """The astronaut panning slowly (a few pixels a frame): [T,512,512,3] uint8."""
    img = _astronaut()
    return np.stack([np.roll(img, (2 * t, 3 * t), axis=(0, 1)) for t in range(VIDEO_FRAMES)])


def _write_example_video(path: Path) -> None:
    """A short H.264 clip for the video workflow (PyAV, which ComfyUI's video nodes use too)."""
    import av
    with av.open(str(path), mode="w") as c:
        stream = c.add_stream("libx264", rate=VIDEO_FPS)
        stream.width, stream.height, stream.pix_fmt = 512, 512, "yuv420p"
        stream.options = {"crf": "12"}
        for frame in _video_frames():
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)


def _place_tiny_weights(models: Path) -> None:
    """Tiny random weights of the real architectures, under the names the workflows use."""
    import torch

    from tiny_models import make_tiny_iqpfr
    if not (REPO / "weights" / RESTORER_FILE).is_file():  # the embedded default is used when shipped
        make_tiny_iqpfr(models / "facerestore_models" / RESTORER_FILE)
    from facerefine.models.arch.identity import build_arcface_backbone
    torch.manual_seed(0)
    arc = {k: v.half() if v.is_floating_point() else v for k, v in build_arcface_backbone().state_dict().items()}
    torch.save(arc, models / "facedetection" / "recognition_arcface_ir_se50.pth")


@pytest.fixture(scope="module")
def server():
    return prepare_server()


@pytest.fixture(scope="module")
def object_info(server):
    return server.object_info()


def load_api(name: str, object_info: dict, test_sized: bool = True) -> tuple[dict, dict]:
    ui = json.loads((WORKFLOW_DIR / name).read_text())
    prompt = comfy_engine.ui_to_api(ui, object_info)
    if test_sized:
        for node in prompt.values():
            node["inputs"].update(TEST_WIDGETS.get(node["class_type"], {}))
    return ui, prompt


def node_id(prompt: dict, class_type: str) -> str:
    return next(k for k, v in prompt.items() if v["class_type"] == class_type)


def read_image(server, item: dict) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.open(server.output_file(item)).convert("RGB")).astype(np.float64) / 255.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def assert_success(server, entry: dict) -> dict:
    errors = server.messages(entry, "execution_error")
    assert entry["status"]["status_str"] == "success", json.dumps(errors, indent=1)[:4000] + server.log_tail(3000)
    return entry["outputs"]


# --- per-workflow checks: name -> check(server, prompt, outputs) ---

def _check_face_crop(server, prompt, outputs):
    crops = outputs[node_id(prompt, "PreviewImage")]["images"]
    assert len(crops) == 1, "the astronaut has one face"
    img = read_image(server, crops[0])
    assert img.shape == (512, 512, 3) and img.std() > 0.05


def _check_quality_score(server, prompt, outputs):
    text = "".join(outputs[node_id(prompt, "PreviewAny")]["text"])
    assert "face 0" in text and "normalized" in text, text
    lines = outputs[node_id(prompt, "FaceRefineQualityScore")]["facerefine_quality"]
    assert len(lines) == 1
    score = lines[0]["after"] or lines[0]["before"]
    assert 0.0 <= score["normalized"] <= 1.0 and score["metric"]


def _roundtrip_psnr(server, prompt, outputs, original: np.ndarray) -> float:
    """Crop -> paste with no restorer: the same image outside the mask; PSNR inside it."""
    out = read_image(server, outputs[node_id(prompt, "SaveImage")]["images"][0])
    mask = read_image(server, outputs[node_id(prompt, "PreviewImage")]["images"][0])[..., 0]
    inside, outside = mask > 0, mask == 0
    assert inside.sum() > 500, "no face was pasted"
    assert np.abs(out[outside] - original[outside]).max() <= 1 / 255 + 1e-9  # 8-bit PNG of a soft mask
    return psnr(out[inside], original[inside])


def _check_paste_back(server, prompt, outputs):
    original = _astronaut().astype(np.float64) / 255.0
    # a small face (~100 px) warped to 512 and back: close, but below the 40 dB of the London bound
    assert _roundtrip_psnr(server, prompt, outputs, original) >= 30.0
    compare = outputs[node_id(prompt, "FaceRefinePasteBack")]["facerefine_compare"]
    _check_compare(server, compare, original.shape[:2])


def _check_compare(server, compare, size):
    assert len(compare) == 1
    for side in ("before", "after"):
        item = compare[0][side]
        assert item["type"] == "temp"
        assert read_image(server, item).shape[:2] == size


def _check_edit_crops(server, prompt, outputs):
    original = _astronaut().astype(np.float64) / 255.0
    out = read_image(server, outputs[node_id(prompt, "SaveImage")]["images"][0])
    changed = np.abs(out - original).max(axis=-1) > 2 / 255
    assert changed.sum() > 200, "sharpened faces were not pasted back"
    ys, xs = np.nonzero(changed)
    assert (ys.max() - ys.min()) < 256 and (xs.max() - xs.min()) < 256, "changes spread beyond the face"


def _check_restored_image(server, prompt, outputs):
    original = _astronaut().astype(np.float64) / 255.0
    out = read_image(server, outputs[node_id(prompt, "SaveImage")]["images"][0])
    assert out.shape == original.shape
    changed = np.abs(out - original).max(axis=-1) > 2 / 255
    assert 200 < changed.sum() < 0.25 * changed.size, "the face should change, the rest should not"


def _check_lookup(server, prompt, outputs):
    _check_restored_image(server, prompt, outputs)
    lines = outputs[node_id(prompt, "FaceRefineCodebookLookup")]["facerefine_quality"]
    assert len(lines) == 1


def _check_refine(server, prompt, outputs):
    crops = outputs[node_id(prompt, "PreviewImage")]["images"]
    assert len(crops) == 1 and read_image(server, crops[0]).shape == (512, 512, 3)


def _check_all_in_one(server, prompt, outputs):
    _check_restored_image(server, prompt, outputs)
    report = "".join(outputs[node_id(prompt, "PreviewAny")]["text"])
    assert "faces per image: [1]" in report, report
    _check_compare(server, outputs[node_id(prompt, "FaceRefineRestore")]["facerefine_compare"], (512, 512))


def _check_video(server, prompt, outputs):
    """The restored clip keeps frame count, size and frame rate; faces change, the background does not."""
    import av
    saved = outputs[node_id(prompt, "SaveVideo")]["images"]
    assert len(saved) == 1
    with av.open(str(server.output_file(saved[0]))) as c:
        stream = c.streams.video[0]
        assert abs(float(stream.average_rate) - VIDEO_FPS) < 1e-3
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(stream)]).astype(np.float64) / 255.0
    source = _video_frames().astype(np.float64) / 255.0
    assert frames.shape == source.shape, (frames.shape, source.shape)
    changed = np.abs(frames - source).max(axis=-1) > 24 / 255    # above the codec's noise
    per_frame = changed.reshape(len(frames), -1).mean(axis=1)
    assert (per_frame > 0.002).all() and (per_frame < 0.25).all(), per_frame
    report = "".join(outputs[node_id(prompt, "PreviewAny")]["text"])
    assert f"frames: {VIDEO_FRAMES}" in report and "face tracks: 1 " in report, report


CHECKS = {
    "01_face_crop": _check_face_crop,
    "02_quality_score": _check_quality_score,
    "03_codebook_lookup": _check_lookup,
    "04_identity_refine": _check_refine,
    "05_paste_back": _check_paste_back,
    "06_edit_crops": _check_edit_crops,
    "07_full_chain": _check_restored_image,
    "08_restore_all_in_one": _check_all_in_one,
    "09_restore_video": _check_video,
}


def test_every_workflow_has_a_check():
    assert WORKFLOWS, "example_workflows/ is empty"
    assert {p.stem for p in WORKFLOWS} <= set(CHECKS)
    for required in ("05_paste_back", "07_full_chain", "08_restore_all_in_one", "09_restore_video"):
        assert (WORKFLOW_DIR / f"{required}.json").is_file(), required


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_workflow_runs(server, object_info, path):
    _, prompt = load_api(path.name, object_info)
    entry = server.run(prompt, timeout=600)
    outputs = assert_success(server, entry)
    CHECKS[path.stem](server, prompt, outputs)


def test_crop_paste_roundtrip_on_a_london_face(server, object_info, london_dir):
    """The crop/paste bound, through ComfyUI: PSNR >= 40 dB inside the mask (image read from
    ../shared/data into the server's temporary input folder, never into the repo)."""
    import shutil

    from PIL import Image
    src = sorted((london_dir / "neutral").glob("*.jpg"))[0]
    shutil.copy(src, server.input_dir / "london_roundtrip.jpg")
    _, prompt = load_api("05_paste_back.json", object_info)
    prompt[node_id(prompt, "LoadImage")]["inputs"]["image"] = "london_roundtrip.jpg"
    outputs = assert_success(server, server.run(prompt))
    original = np.asarray(Image.open(src).convert("RGB")).astype(np.float64) / 255.0
    value = _roundtrip_psnr(server, prompt, outputs, original)
    assert value >= 40.0, f"PSNR {value:.2f} dB inside the mask"


def test_all_in_one_with_identity_refine(server, object_info):
    """The all-in-one node with refine steps: identity guidance needs autograd inside ComfyUI."""
    _, prompt = load_api("08_restore_all_in_one.json", object_info)
    restore = node_id(prompt, "FaceRefineRestore")
    prompt[restore]["inputs"].update(refine_steps=2, identity_strength=1.0, seed=1)
    outputs = assert_success(server, server.run(prompt, timeout=600))
    report = "".join(outputs[node_id(prompt, "PreviewAny")]["text"])
    assert "refine: 2 steps" in report, report
    _check_restored_image(server, prompt, outputs)


# --- negative cases ---

def test_wrong_wire_is_rejected_by_validation(server, object_info):
    """FACE_CROPS into an IMAGE input: /prompt answers 400 naming the input, nothing runs."""
    _, prompt = load_api("05_paste_back.json", object_info)
    crop, paste = node_id(prompt, "FaceRefineFaceCrop"), node_id(prompt, "FaceRefinePasteBack")
    bad = copy.deepcopy(prompt)
    bad[paste]["inputs"]["image"] = [crop, 0]   # output 0 of Face Crop is FACE_CROPS
    status, body = server.queue(bad)
    assert status == 400, body
    errors = body["node_errors"][paste]["errors"]
    assert any(e["type"] == "return_type_mismatch" and "FACE_CROPS" in e["details"] and
               e["extra_info"]["input_name"] == "image" for e in errors), errors


def test_missing_weights_file_is_a_node_error_naming_file_and_folder(server, object_info):
    _, prompt = load_api("08_restore_all_in_one.json", object_info)
    restore = node_id(prompt, "FaceRefineRestore")
    choices = object_info["FaceRefineRestore"]["input"]["required"]["restorer"][0]
    # a registry file the dropdown offers but nobody has on disk ("auto" and shipped names always load)
    missing = next(n for n in choices if n not in ("none", RESTORER_FILE) and n.endswith((".pth", ".ckpt"))
                   and not (server.models / "facerestore_models" / n).exists())
    prompt[restore]["inputs"]["restorer"] = missing
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "error"
    err = server.messages(entry, "execution_error")[0]
    assert err["node_id"] == restore and err["exception_type"].endswith("WeightsNotFoundError"), err
    assert missing in err["exception_message"] and "facerestore_models" in err["exception_message"]
    assert str(server.models / "facerestore_models") in err["exception_message"]


def test_interrupt_stops_a_long_refine(server, object_info):
    _, prompt = load_api("04_identity_refine.json", object_info)
    refine = node_id(prompt, "FaceRefineIdentityLatentRefine")
    prompt[refine]["inputs"]["steps"] = 200
    prompt[refine]["inputs"]["strength"] = 1.0
    entry, messages = comfy_engine.run_and_interrupt(server, prompt, refine, after_progress=2)
    assert entry["status"]["status_str"] == "error"
    stopped = server.messages(entry, "execution_interrupted")
    assert stopped and str(stopped[0]["node_id"]) == refine, entry["status"]
    progress = [m["data"] for m in messages if m["type"] == "progress" and str(m["data"]["node"]) == refine]
    assert progress and progress[-1]["value"] < progress[-1]["max"], "refine ran to the end"
