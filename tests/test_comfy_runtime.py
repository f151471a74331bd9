"""nodes/conventions.py outside ComfyUI: plain fallbacks for progress, interrupt, device, OOM, cache."""
import os

import numpy as np
import pytest
import torch

from facerefine.core.types import FaceCrops, FaceInfo, QualityScore
from facerefine.errors import FaceRefineError
from facerefine.nodes import conventions


def test_device_fallbacks_without_comfy():
    assert not conventions.in_comfy()
    assert conventions.get_device("cpu") == torch.device("cpu")
    assert conventions.get_device().type in ("cpu", "cuda")
    assert conventions.offload_device() == torch.device("cpu")
    conventions.soft_empty_cache()
    if not torch.cuda.is_available():
        with pytest.raises(FaceRefineError, match="CUDA"):
            conventions.get_device("cuda")


def test_on_device_moves_and_offloads():
    model = torch.nn.Linear(2, 2)
    with conventions.on_device(model, torch.device("cpu")) as m:
        assert next(m.parameters()).device.type == "cpu"
    assert next(model.parameters()).device.type == "cpu"


def test_interrupt_flag_stops_progress():
    seen = []
    progress = conventions.Progress(5, callback=lambda done, total: seen.append((done, total)))
    progress.update()
    conventions.request_interrupt()
    with pytest.raises(conventions.Interrupted):
        progress.update()
    conventions.check_interrupted()  # flag is consumed: the next run is not interrupted
    assert seen == [(1, 5), (2, 5)]


def test_map_batches_halves_on_oom_and_keeps_order():
    calls = []

    def fn(start, stop):
        calls.append(stop - start)
        if stop - start > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return list(range(start, stop))

    progress = conventions.Progress(7)
    chunks = conventions.map_batches(fn, 7, 8, progress)
    assert [x for c in chunks for x in c] == list(range(7))
    assert calls[:2] == [7, 4] and max(calls[2:]) <= 2
    assert progress.done == 7


def test_map_batches_gives_up_with_readable_error_and_reraises_others():
    def always_oom(start, stop):
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(FaceRefineError, match="one face at a time"):
        conventions.map_batches(always_oom, 3, 2)

    def broken(start, stop):
        raise ValueError("not an OOM")

    with pytest.raises(ValueError, match="not an OOM"):
        conventions.map_batches(broken, 3, 2)


def test_model_cache_keys_on_file_mtime_and_device(tmp_path):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"one")
    cache = conventions.ModelCache(max_items=2)
    loads = []

    def loader():
        loads.append(1)
        return object()

    a = cache.get_or_load(f, "cpu", loader)
    assert cache.get_or_load(f, "cpu", loader) is a and len(loads) == 1
    cache.get_or_load(f, "cuda:0", loader)
    assert len(loads) == 2
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    assert cache.get_or_load(f, "cpu", loader) is not a and len(loads) == 3
    assert len(cache) == 2  # LRU bound


def _face(quality=()):
    eye = np.zeros((2, 3), np.float32)
    return FaceInfo(eye, eye, np.zeros((5, 2), np.float32), (0, 0, 1, 1), 0.9, 0, (8, 8), tuple(quality))


def test_quality_ui_reports_before_and_after():
    before = FaceCrops(torch.zeros(2, 3, 8, 8), (_face([QualityScore("piqe", 40.0, 0.6, True)]), _face()), 8)
    after = before.with_faces((before.faces[0].with_quality(QualityScore("piqe", 20.0, 0.8, True)),
                               before.faces[1]))
    ui = conventions.quality_ui(before, after)["facerefine_quality"]
    assert ui[0]["before"]["normalized"] == 0.6 and ui[0]["after"]["normalized"] == 0.8
    assert ui[0]["after"]["metric"] == "piqe"
    assert ui[1] == {"face": 1, "before": None, "after": None}
    same = conventions.quality_ui(before, before)["facerefine_quality"]
    assert same[0]["after"] is None  # carried-through score is not shown twice


def test_node_output_and_previews_outside_comfy():
    assert conventions.node_output((1, 2)) == (1, 2)
    assert conventions.node_output((1,), {"x": [1]}) == {"ui": {"x": [1]}, "result": (1,)}
    assert conventions.compare_ui(torch.zeros(1, 4, 4, 3), torch.ones(1, 4, 4, 3)) == {"facerefine_compare": []}
    conventions.register_model_folders()  # no-op without ComfyUI


def test_core_style_callbacks():
    progress = conventions.Progress(1)
    progress.absolute(3, 10)
    assert (progress.done, progress.total) == (3, 10)
    assert conventions.should_stop() is False
    conventions.request_interrupt()
    assert conventions.should_stop() is True
    assert conventions.should_stop() is False


def test_dropdowns_list_present_and_known_weights(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "facerestore_models").mkdir(parents=True)
    (home / "facerestore_models" / "mine.safetensors").write_bytes(b"x")
    (home / "facerestore_models" / "readme.txt").write_text("not weights")
    monkeypatch.setenv("FACEREFINE_HOME", str(home))
    names = conventions.list_weights("facerestore_models")
    assert "mine.safetensors" in names and "readme.txt" not in names
    assert "mtcnn.safetensors" not in names  # embedded detector weights belong to facedetection
    choices = conventions.restorer_choices(extra=["none"])
    assert choices[0] == "none" and "mine.safetensors" in choices and "codeformer.pth" in choices
    assert conventions.default_restorer() in choices
    assert conventions.list_weights_for("facedetection", "ArcFace-IR-SE50") == [
        n for n in conventions.list_weights("facedetection") if n != "mtcnn.safetensors"]


def test_missing_weights_error_names_file_and_folders(tmp_path, monkeypatch):
    from facerefine.errors import WeightsNotFoundError
    monkeypatch.setenv("FACEREFINE_HOME", str(tmp_path / "home"))
    with pytest.raises(WeightsNotFoundError) as err:
        conventions.weights_path("GFPGANv1.4.pth", "facerestore_models")
    text = str(err.value)
    assert "GFPGANv1.4.pth" in text and str(tmp_path / "home" / "facerestore_models") in text
