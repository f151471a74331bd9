"""Issue 16, items 2, 4, 5 and 11: weights files cannot crash, poison or exhaust the process."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from facerefine.core.lookup.options import LookupOptions
from facerefine.errors import FaceRefineError, WeightsFormatError, WrongArchitectureError
from facerefine.models import loading
from facerefine.models.loading import save_safetensors

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_models import make_tiny_iqpfr  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("one_thread")


def _edit(path: Path, out: Path, change, metadata=None) -> Path:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        sd = {k: f.get_tensor(k) for k in f.keys()}
    change(sd)
    if metadata is not None:
        meta.update(metadata)
    return save_safetensors(sd, out, metadata=meta)


@pytest.fixture(scope="module")
def tiny_iqpfr(tmp_path_factory):
    return make_tiny_iqpfr(tmp_path_factory.mktemp("w") / "tiny_iqpfr.safetensors")


# ---------- item 5: dtypes and NaN/inf at load ----------

@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.bool, torch.complex64])
def test_wrong_dtype_is_refused_at_load(tiny_iqpfr, tmp_path, dtype):
    def change(sd):
        w = sd["merge.weight"]
        sd["merge.weight"] = (w * 100).to(dtype) if dtype != torch.bool else w > 0
    bad = _edit(tiny_iqpfr, tmp_path / "bad.safetensors", change)
    with pytest.raises(WeightsFormatError, match=r"merge\.weight") as err:
        loading.load_state_dict(bad)
    assert str(dtype).replace("torch.", "") in str(err.value)
    from facerefine.models.restorers import load_restorer
    with pytest.raises(WeightsFormatError):
        load_restorer(str(bad))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_inf_weights_are_refused_at_load(tiny_iqpfr, tmp_path, value):
    def change(sd):
        sd["quantize.embedding.weight"][3, 1] = value
    bad = _edit(tiny_iqpfr, tmp_path / "nan.safetensors", change)
    with pytest.raises(WeightsFormatError, match=r"NaN/inf weights in quantize\.embedding\.weight \(1 of"):
        loading.load_state_dict(bad)


def test_int8_and_nan_in_a_pth_too(tmp_path):
    sd = {"conv.weight": torch.randn(4, 3, 3, 3), "bn.num_batches_tracked": torch.tensor(7)}
    ok = tmp_path / "ok.pth"
    torch.save({"params": sd}, ok)
    assert set(loading.load_state_dict(ok)) == {"conv.weight", "bn.num_batches_tracked"}  # int64 counters pass
    torch.save({"params": {**sd, "q": torch.zeros(3, dtype=torch.int8)}}, tmp_path / "q.pth")
    with pytest.raises(WeightsFormatError, match="int8"):
        loading.load_state_dict(tmp_path / "q.pth")
    sd["conv.weight"][0, 0, 0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.pth")
    with pytest.raises(WeightsFormatError, match="NaN"):
        loading.load_state_dict(tmp_path / "nan.pth")


def test_nan_output_names_the_face_and_the_file(tiny_iqpfr, tmp_path):
    """Finite weights that overflow at run time: the lookup refuses the output instead of a black face."""
    from facerefine.core.lookup.lookup import lookup
    from facerefine.core.types import FaceCrops
    from facerefine.models.restorers import load_restorer

    def change(sd):
        sd["generator.blocks.0.weight"] = torch.full_like(sd["generator.blocks.0.weight"], 3e38)
    huge = _edit(tiny_iqpfr, tmp_path / "overflow.safetensors", change)
    restorer = load_restorer(str(huge))
    crops = _face_crops(FaceCrops, n=2)
    with pytest.raises(FaceRefineError, match=r"NaN/inf pixels for face 0 \(image 0\), face 1") as err:
        lookup(crops, restorer, LookupOptions(quality=1.0, fidelity=0.5, mode="off"))
    assert "overflow.safetensors" in str(err.value)


def _face_crops(FaceCrops, n=1):
    from facerefine.core.crop.step import align_faces
    from facerefine.core.crop.mtcnn import RawDetections
    from facerefine.core.crop.options import CropOptions
    images = torch.rand(1, 96, 96, 3, generator=torch.Generator().manual_seed(0))
    lm = torch.tensor([[34.0, 40.0], [62.0, 40.0], [48.0, 54.0], [37.0, 68.0], [59.0, 68.0]])
    det = RawDetections(torch.tensor([[20.0, 20.0, 76.0, 80.0]] * n), torch.ones(n), torch.stack([lm] * n))
    return align_faces(images, [det], CropOptions(crop_size=256))


# ---------- item 4: the config stored in the file ----------

def _with_config(tiny_iqpfr, tmp_path, config_text) -> Path:
    return _edit(tiny_iqpfr, tmp_path / "cfg.safetensors", lambda sd: None, metadata={"config": config_text})


@pytest.mark.parametrize("text, match", [
    ("{not json", "not valid JSON"),
    ('{"img_size": 64, "secret_flag": 1}', r"unknown IQPFR config key\(s\) \['secret_flag'\]"),
    ('{"n_layers": 49}', r"n_layers=49 \(allowed 0..48\)"),
    ('{"ch_mult": [1, 2, "x"]}', "ch_mult"),
    ('[1, 2]', "JSON object"),
])
def test_bad_config_gives_a_clear_error(tiny_iqpfr, tmp_path, text, match):
    from facerefine.models.restorers import load_restorer
    bad = _with_config(tiny_iqpfr, tmp_path, text)
    with pytest.raises(WrongArchitectureError, match=match) as err:
        load_restorer(str(bad))
    assert "cfg.safetensors" in str(err.value)


_HUGE_CHILD = r"""
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))
from facerefine.models.restorers import load_restorer  # imports (torch) are not what is measured
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.monotonic()
try:
    load_restorer(sys.argv[1])
    out = {"ok": True}
except Exception as err:
    out = {"ok": False, "type": type(err).__name__, "error": str(err)[:400]}
out["seconds"] = time.monotonic() - start
out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out["grew_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # peak growth past the imports
print(json.dumps(out))
"""


def test_config_asking_for_a_huge_model_fails_fast_with_little_memory(tiny_iqpfr, tmp_path):
    """A small file whose header asks for tens of GB: refused from the meta-device shapes, no allocation."""
    huge = {"img_size": 1024, "nf": 256, "ch_mult": [1, 2, 4, 8, 16, 16], "res_blocks": 8, "emb_dim": 1024,
            "codebook_size": 16384, "dim_embd": 2048, "n_head": 16, "n_layers": 48,
            "connect_list": ["128", "256"], "quality_hidden": 64, "beta": 0.25}
    bad = _with_config(tiny_iqpfr, tmp_path, json.dumps(huge))
    assert bad.stat().st_size < 5_000_000
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    limit = 6 * 1024 ** 3  # address space: the old code died here (or, without a limit, used > 50 GB)
    proc = subprocess.run([sys.executable, "-c", _HUGE_CHILD, str(bad), str(limit)], capture_output=True,
                          text=True, env=env, cwd=REPO.parent, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ok"] is False and out["type"] == "WrongArchitectureError", out
    assert "cfg.safetensors" in out["error"]
    assert out["seconds"] < 60, out
    assert out["grew_mb"] < 1000, out  # the peak after imports (a fresh venv's import peak alone varies)


def test_valid_tiny_iqpfr_still_loads(tiny_iqpfr):
    from facerefine.models.restorers import load_restorer
    loaded = load_restorer(str(tiny_iqpfr))
    assert loaded.architecture == "IQPFR"
    assert all(p.device.type == "cpu" for p in loaded.module.parameters())


# ---------- item 2: writers use unique temporary names ----------

def test_two_safetensors_writers_never_share_a_temporary_file(tmp_path, monkeypatch):
    seen = []
    from safetensors import torch as st
    real = st.save_file

    def spy(tensors, filename, metadata=None):
        seen.append(Path(filename))
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(st, "save_file", spy)
    target = tmp_path / "m.safetensors"
    save_safetensors({"a": torch.zeros(2)}, target)
    save_safetensors({"a": torch.ones(2)}, target)
    assert len(seen) == 2 and seen[0] != seen[1]
    assert all(p.parent == tmp_path and p.name.startswith("m.safetensors.") and p.suffix == ".part" for p in seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


# ---------- item 11: restorer/detector 'auto' falls back past a bad file ----------

def test_auto_restorer_skips_a_bad_codeformer_file_with_a_warning(tmp_path):
    folder = Path(os.environ["FACEREFINE_HOME"]) / "facerestore_models"
    folder.mkdir(parents=True)
    (folder / "codeformer.pth").write_bytes(b"<html>not a checkpoint</html>" * 10)
    from facerefine.models.restorers import load_restorer
    with pytest.warns(RuntimeWarning, match=r"skipped codeformer .*codeformer\.pth"):
        restorer = load_restorer("auto")
    from facerefine.models.registry import restorer_candidates
    assert restorer.name == restorer_candidates()[-1]  # the embedded model
    assert restorer.load_notes and "codeformer.pth" in restorer.load_notes[0]


def test_explicit_bad_restorer_still_fails(tmp_path):
    folder = Path(os.environ["FACEREFINE_HOME"]) / "facerestore_models"
    folder.mkdir(parents=True)
    (folder / "codeformer.pth").write_bytes(b"\x80\x02garbage" * 20)
    from facerefine.models.restorers import load_restorer
    with pytest.raises(WeightsFormatError, match="codeformer.pth"):
        load_restorer("codeformer")


def test_auto_detector_skips_a_bad_retinaface_file(tmp_path):
    folder = Path(os.environ["FACEREFINE_HOME"]) / "facedetection"
    folder.mkdir(parents=True)
    (folder / "detection_Resnet50_Final.pth").write_bytes(b"PK\x03\x04 truncated")
    from facerefine.core.crop import detectors
    from facerefine.models import cache as model_cache
    model_cache.clear("detector")
    try:
        with pytest.warns(RuntimeWarning, match=r"skipped retinaface .*detection_Resnet50_Final\.pth"):
            det = detectors.load_detector("auto")
        assert det.name == detectors.EMBEDDED
        with pytest.raises(WeightsFormatError):
            detectors.load_detector("retinaface")
    finally:
        model_cache.clear("detector")
