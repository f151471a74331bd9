"""Throughput of `restore --ray` with 1 actor and with N actors, measured in one run.

    python -m facerefine.lab.bench.ray_scale [--images 96] [--actors 2] [--restorer facerefine-compact]
        [--size 256] [--json]

Writes ``--images`` copies of London portraits (``../shared/data/london``, resized to ``--size``) to a temporary
folder, then restores the folder through ``core.ray_restore.restore_on_ray`` once with one actor and once with
``--actors`` actors (1 CPU and 1 torch thread each), in a local Ray runtime with ``--actors`` CPUs. Throughput
is measured at the steady state, from the actors' own per-file clock: files per second while every actor of the
pool is working (from the last actor's first file to the first actor's last file), so actor start-up, model
loading and the tail are left out. ``--images`` should be large enough that the window holds several files per
actor (``files_in_window``).
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
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        img = cv2.resize(cv2.imread(str(files[i % len(files)])), (size, size), interpolation=cv2.INTER_AREA)
        path = folder / f"face_{i:04d}.png"
        if not cv2.imwrite(str(path), img):
            raise SystemExit(f"could not write {path}")
        out.append(path)
    return out


def steady_rate(rows: list[dict]) -> tuple[float, float, int]:
    """Files per second while every actor is working: the window from the last actor's first file to the
    first actor's last file (start-up, model loading and the tail are outside it), counting each file by
    the fraction of its own run time inside the window. Returns (files/s, window seconds, files touched)."""
    by_worker: dict = {}
    for r in rows:
        by_worker.setdefault(r["worker"], []).append((float(r["started"]), float(r["finished"])))
    t0 = max(min(s for s, _ in spans) for spans in by_worker.values())
    t1 = min(max(e for _, e in spans) for spans in by_worker.values())
    if t1 <= t0:
        return 0.0, 0.0, 0
    done, touched = 0.0, 0
    for spans in by_worker.values():
        for s, e in spans:
            inside = max(0.0, min(e, t1) - max(s, t0))
            if inside > 0:
                done += inside / max(e - s, 1e-9)
                touched += 1
    return done / (t1 - t0), t1 - t0, touched


def timed_run(inputs, out_dir: Path, options, actors: int) -> dict:
    from ...core.ray_restore import restore_on_ray
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(p, out_dir / f"{p.stem}_restored.png") for p in inputs]
    start = time.perf_counter()
    rows = restore_on_ray(jobs, options, actors=actors, cpus_per_actor=1.0)
    total = time.perf_counter() - start
    errors = [r["error"] for r in rows if r["error"]]
    if errors:  # a throughput of failures means nothing
        raise SystemExit(f"{len(errors)} of {len(rows)} files failed with {actors} actor(s): {errors[:3]}")
    rate, window, touched = steady_rate(rows)
    per_file = sorted(float(r["seconds"]) for r in rows)
    return {"actors": actors, "files": len(rows), "wall_s": round(total, 2), "files_per_s": round(rate, 4),
            "window_s": round(window, 2), "files_in_window": touched,
            "median_file_s": round(per_file[len(per_file) // 2], 3),
            "workers": len({r["worker"] for r in rows})}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=96)
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
