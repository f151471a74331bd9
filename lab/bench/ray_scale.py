"""Throughput of `restore --ray` with 1 actor and with N actors, measured in one run.

    python -m facerefine.lab.bench.ray_scale [--images 24] [--actors 2] [--restorer facerefine-compact]
        [--size 256] [--json]

Writes ``--images`` copies of London portraits (``../shared/data/london``, resized to ``--size``) to a temporary
folder, then restores the folder through ``core.ray_restore.restore_on_ray`` once with one actor and once with
``--actors`` actors (1 CPU and 1 torch thread each), in a local Ray runtime with ``--actors`` CPUs. Throughput
is measured at the steady state: results per second between the first and the last finished file, so actor
start-up and model loading are left out (they are reported separately as ``startup_s``).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "london"


def make_folder(folder: Path, count: int, size: int) -> list[Path]:
    import cv2
    files = sorted((DATA / "neutral").glob("*.jpg"))
    if not files:
        raise SystemExit(f"no London photos in {DATA}")
    out = []
    for i in range(count):
        img = cv2.resize(cv2.imread(str(files[i % len(files)])), (size, size), interpolation=cv2.INTER_AREA)
        path = folder / f"face_{i:04d}.png"
        cv2.imwrite(str(path), img)
        out.append(path)
    return out


def timed_run(inputs, out_dir: Path, options, actors: int) -> dict:
    from ...core.ray_restore import restore_on_ray
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(p, out_dir / f"{p.stem}_restored.png") for p in inputs]
    done_at = []
    start = time.perf_counter()
    rows = restore_on_ray(jobs, options, actors=actors, cpus_per_actor=1.0,
                          progress=lambda row, k, n: done_at.append(time.perf_counter()))
    total = time.perf_counter() - start
    errors = [r["error"] for r in rows if r["error"]]
    steady = (len(done_at) - 1) / max(done_at[-1] - done_at[0], 1e-9) if len(done_at) > 1 else 0.0
    return {"actors": actors, "files": len(rows), "errors": errors[:3], "wall_s": round(total, 2),
            "startup_s": round(done_at[0] - start, 2) if done_at else None, "files_per_s": round(steady, 4),
            "workers": len({r["worker"] for r in rows})}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--restorer", default="facerefine-compact")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    import ray

    from ...core.pipeline import RestoreOptions
    options = RestoreOptions.from_values(restorer=a.restorer, detector="mtcnn", device="cpu", crop_size=256)
    tmp = Path(tempfile.mkdtemp(prefix="facerefine-ray-bench-"))
    try:
        inputs = make_folder(tmp / "in", a.images, a.size)
        ray.init(num_cpus=a.actors, include_dashboard=False, log_to_driver=False)
        one = timed_run(inputs, tmp / "out1", options, 1)
        many = timed_run(inputs, tmp / f"out{a.actors}", options, a.actors)
        ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"restorer": a.restorer, "images": a.images, "size": a.size, "one_actor": one,
              f"{a.actors}_actors": many,
              "speedup": round(many["files_per_s"] / max(one["files_per_s"], 1e-9), 3)}
    print(json.dumps(result) if a.json else json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
