"""`restore --ray`: a folder restored on Ray Data actors equals the single-process result and resumes.

Starts a local Ray runtime with 2 CPUs; skipped when Ray (the optional extra facerefine[ray]) is absent.
"""
import json

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def local_ray():
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    except Exception as err:  # noqa: BLE001 - the local runtime itself did not start (e.g. an overloaded machine)
        if "timed out during startup" not in str(err):
            raise
        pytest.skip(f"the local Ray runtime did not start: {err}")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def faces_folder(tmp_path_factory):
    """24 small faces (London portraits at 128x128, PNG) and a small random-initialised IQPFR restorer."""
    import cv2

    from conftest import SHARED_DATA
    from facerefine.lab.tiny_models import make_tiny_iqpfr
    files = sorted((SHARED_DATA / "london" / "neutral").glob("*.jpg"))[:24]
    if len(files) < 24:
        pytest.skip("../shared/data/london not present")
    root = tmp_path_factory.mktemp("ray")
    folder = root / "faces"
    folder.mkdir()
    for f in files:
        img = cv2.resize(cv2.imread(str(f)), (128, 128), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / (f.stem + ".png")), img)
    model = make_tiny_iqpfr(root / "tiny_iqpfr.safetensors")
    return folder, model


def _restore(args, capsys):
    from facerefine.cli import main
    code = main(["restore", *args, "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1])


def _pixels(path):
    import cv2
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_ray_equals_single_process_and_skips_existing(local_ray, faces_folder, tmp_path, capsys):
    folder, model = faces_folder
    common = ["--restorer", str(model), "--detector", "mtcnn", "--device", "cpu", "--crop-size", "256"]
    code, single = _restore([str(folder), "-o", str(tmp_path / "single"), *common], capsys)
    assert code == 0 and len(single["results"]) == 24 and single["faces"] >= 20
    code, dist = _restore([str(folder), "-o", str(tmp_path / "ray"), "--ray", "--ray-actors", "2", *common], capsys)
    assert code == 0 and dist["ray"] and len(dist["results"]) == 24 and not dist["failed"]
    assert dist["actors"] == 2                         # the work really was spread over two actor processes
    names = sorted(p.name for p in (tmp_path / "single").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "ray").iterdir())
    assert len(names) == 24 and all(n.endswith("_restored.png") for n in names)
    for n in names:                                    # the same code on the same input: identical pixels
        assert np.array_equal(_pixels(tmp_path / "single" / n), _pixels(tmp_path / "ray" / n)), n
    # resume: existing results are skipped, nothing is rewritten
    stamps = {n: (tmp_path / "ray" / n).stat().st_mtime_ns for n in names}
    code, again = _restore([str(folder), "-o", str(tmp_path / "ray"), "--ray", *common], capsys)
    assert code == 0 and again["results"] == [] and len(again["skipped"]) == 24
    assert {n: (tmp_path / "ray" / n).stat().st_mtime_ns for n in names} == stamps
    # a run stopped part-way: only the missing results are made, equal to the single-process ones
    for n in names[:3]:
        (tmp_path / "ray" / n).unlink()
    code, resumed = _restore([str(folder), "-o", str(tmp_path / "ray"), "--ray", *common], capsys)
    assert code == 0 and len(resumed["results"]) == 3 and len(resumed["skipped"]) == 21
    for n in names[:3]:
        assert np.array_equal(_pixels(tmp_path / "single" / n), _pixels(tmp_path / "ray" / n))
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == names   # no counter names on resume


def test_ray_reports_a_bad_file_and_goes_on(local_ray, faces_folder, tmp_path, capsys):
    folder, _ = faces_folder
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for p in sorted(folder.iterdir())[:2]:
        (mixed / p.name).write_bytes(p.read_bytes())
    (mixed / "broken.png").write_bytes(b"not an image")
    code, res = _restore([str(mixed), "-o", str(tmp_path / "out"), "--ray", "--restorer", "none",
                          "--detector", "mtcnn"], capsys)
    assert code == 1 and len(res["results"]) == 2
    assert [f["input"] for f in res["failed"]] == [str(mixed / "broken.png")]
    assert not (tmp_path / "out" / "broken_restored.png").exists()
