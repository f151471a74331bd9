"""bench: the CLI prints one parseable JSON report on tiny models; the measuring helpers are right.

No timing assertions: only structure, FLOP counts and memory deltas that do not depend on speed.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from facerefine.lab import bench

REPO = Path(__file__).resolve().parent.parent


def _run_cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, FACEREFINE_OFFLINE="1", HF_HUB_OFFLINE="1", FACEREFINE_HOME=str(tmp_path / "home"))
    return subprocess.run([sys.executable, "-m", "facerefine", "bench", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    proc = _run_cli("--json", "--tiny", "--batch", "1,2", "--repeats", "1", "--warmup", "0",
                    "--refine-steps", "2", "--quiet", tmp_path=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    return json.loads(last)


def test_tiny_bench_prints_parseable_json(tiny_report):
    r = tiny_report
    assert r["ok"] is True
    assert r["device"] == "cpu"
    assert r["options"]["tiny"] is True and r["options"]["batches"] == [1, 2]
    assert set(r["stages"]) == set(bench.ALL_STAGES)
    assert r["load"]["before"] is None or len(r["load"]["before"]) == 3
    assert r["machine"]["torch_threads"] >= 1


def test_tiny_bench_has_bare_forward_figures(tiny_report):
    bare = tiny_report["bare"]["batch"]
    assert set(bare) == {"1", "2"}
    for b, row in bare.items():
        assert row["repeats"] == 1 and row["median_s"] > 0
        assert row["faces_per_s"] > 0
    # FLOPs are counted on batch 1 and scale with the batch
    assert bare["1"]["gflop"] > 0
    assert bare["2"]["gflop"] == pytest.approx(2 * bare["1"]["gflop"], rel=1e-3)


def test_tiny_bench_no_stage_crashed(tiny_report):
    broken = {k: v.get("reason") for k, v in tiny_report["stages"].items() if v["status"] == "error"}
    assert not broken, broken
    for name, stage in tiny_report["stages"].items():
        assert stage["status"] in ("ok", "unavailable"), name
        if stage["status"] == "ok":
            assert isinstance(stage.get("summary", {}), dict)


def test_tiny_bench_targets_listed(tiny_report):
    names = [t["name"] for t in tiny_report["targets"]]
    assert any("overhead" in n for n in names)
    assert any("memory" in n for n in names)
    for t in tiny_report["targets"]:
        assert t["met"] in (True, False, None)
        if t["name"].startswith("GPU") or "(GPU)" in t["name"]:
            assert t["met"] is None  # a CPU run cannot tell


def test_bad_arguments_give_clean_errors(tmp_path):
    proc = _run_cli("--json", "--batch", "0,x", tmp_path=tmp_path)
    assert proc.returncode == 1
    assert json.loads(proc.stdout.strip().splitlines()[-1])["ok"] is False
    proc = _run_cli("--json", "--stages", "nonsense", tmp_path=tmp_path)
    assert proc.returncode == 1 and "nonsense" in proc.stderr


def test_flop_counter_counts_a_matmul():
    a, b = torch.randn(32, 48), torch.randn(48, 16)
    res = bench.measure_interleaved({"mm": lambda: a @ b}, torch.device("cpu"), warmup=1, repeats=2,
                                    count_flops=True)
    assert res["mm"].flops == 2 * 32 * 48 * 16
    assert len(res["mm"].times) == 2 and len(res["mm"].cpu_times) == 2
    # counted during the only timed run when there is no warm-up
    res = bench.measure_interleaved({"mm": lambda: a @ b}, torch.device("cpu"), warmup=0, repeats=1,
                                    count_flops=True)
    assert res["mm"].flops == 2 * 32 * 48 * 16


def test_peak_memory_sees_a_large_allocation():
    size = 64 * 1024 * 1024
    seen = []
    for _ in range(3):  # another thread of the test process may free memory inside the block
        with bench.PeakMemory(torch.device("cpu")) as mem:
            x = torch.ones(size // 4, dtype=torch.float32)  # 64 MiB, touched
            del x
        seen.append(mem.increment)
        if mem.increment >= size * 0.9:
            break
    assert max(seen) >= size * 0.9, (seen, mem.method)
    with bench.PeakMemory(torch.device("cpu")) as small:
        pass
    assert small.increment < size // 4


def test_interleaved_order_and_medians():
    calls = []
    res = bench.measure_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                    torch.device("cpu"), warmup=1, repeats=3)
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert res["a"].summary(2)["per_face_s"] == pytest.approx(res["a"].median / 2, abs=1e-6)


def test_targets_from_a_report():
    report = {"device": "cpu", "options": {"dtype": "fp32"}, "machine": {},
              "stages": {"lookup": {"summary": {"overhead_vs_bare_batch1": 0.05,
                                                "defaults_ratio_to_bare_batch1": 2.5}},
                         "memory": {"summary": {"pipeline_over_bare_total": 1.1}},
                         "refine": {"summary": {"refine_over_lookup": 3.0}}}}
    t = {x["name"]: x["met"] for x in bench.evaluate_targets(report)}
    assert t["lookup-only overhead over bare forward, batch 1"] is True
    assert t["CPU: lookup at defaults / bare forward, batch 1"] is False
    assert t["pipeline peak memory for one 512^2 face / bare forward peak"] is True
    assert t["refine at default steps / lookup (GPU)"] is None  # GPU target, CPU run
