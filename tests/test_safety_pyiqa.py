"""Issue 16, item 9: pyiqa weights load without patching torch.load (a process-wide global)."""
import os
from pathlib import Path

import pytest
import torch

from facerefine.errors import WeightsFormatError

pyiqa = pytest.importorskip("pyiqa")


class CodeCarrier:  # pickled by reference: weights_only=True refuses its global
    def __init__(self):
        self.x = 1


def _put(file: str, payload) -> Path:
    folder = Path(os.environ["FACEREFINE_HOME"]) / "pyiqa"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(payload, folder / file)
    return folder / file


class _FakeModel:
    def __init__(self):
        self.net = torch.nn.Linear(2, 1)


def test_metric_build_leaves_torch_load_alone_and_passes_the_file(monkeypatch):
    from facerefine.core.score import metrics
    path = _put("topiq_nr_cgfiqa_res50-0a8b8e4f.pth", {"params": {"w": torch.zeros(3)}})
    original = torch.load
    seen = {}

    def fake_create(name, device=None, **kwargs):
        seen.update(name=name, kwargs=kwargs, torch_load_untouched=torch.load is original)
        return _FakeModel()

    monkeypatch.setattr(pyiqa, "create_metric", fake_create)
    metrics._build(metrics.METRICS["topiq_nr-face"], torch.device("cpu"), True)
    assert seen["torch_load_untouched"] is True
    assert seen["kwargs"]["pretrained_model_path"] == str(path)
    assert torch.load is original


def test_checkpoint_with_pickled_code_is_refused_before_pyiqa_reads_it(monkeypatch):
    from facerefine.core.score import metrics
    from facerefine.errors import FaceRefineError
    _put("topiq_nr_cgfiqa_res50-0a8b8e4f.pth", {"params": {"w": torch.zeros(3)}, "extra": CodeCarrier()})
    called = []
    monkeypatch.setattr(pyiqa, "create_metric", lambda *a, **k: called.append(a) or _FakeModel())
    with pytest.raises(FaceRefineError, match="pickled Python objects") as err:
        metrics._build(metrics.METRICS["topiq_nr-face"], torch.device("cpu"), True)
    assert isinstance(err.value, WeightsFormatError) and called == []


def test_other_threads_never_see_a_patched_torch_load(monkeypatch):
    """While one thread builds a metric, torch.load in another thread is the real one."""
    import threading
    from facerefine.core.score import metrics
    _put("topiq_nr_cgfiqa_res50-0a8b8e4f.pth", {"params": {"w": torch.zeros(3)}})
    original = torch.load
    inside, release, observed = threading.Event(), threading.Event(), []

    def slow_create(name, device=None, **kwargs):
        inside.set()
        release.wait(10)
        return _FakeModel()

    monkeypatch.setattr(pyiqa, "create_metric", slow_create)
    builder = threading.Thread(target=metrics._build, args=(metrics.METRICS["topiq_nr-face"],
                                                           torch.device("cpu"), True))
    builder.start()
    assert inside.wait(30)
    observed.append(torch.load is original)
    release.set()
    builder.join(30)
    assert observed == [True]
