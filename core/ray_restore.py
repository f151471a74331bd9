"""Scale `restore` out over a Ray cluster with Ray Data (optional extra: ``pip install facerefine[ray]``).

Files stream through a pool of actors; each actor loads the models once (``build_steps``) and then
restores one file per call with exactly the single-machine code (``restore_images`` + ``save_image``
through ``write_output``), writing to the target the caller decided (same naming rules). Targets
that already exist are skipped before anything is scheduled, so a stopped run is resumed by running
the same command again. Nothing here is imported by ComfyUI, A1111 or the app.

The input and output paths must be visible to every node (a shared file system, or a single
machine); see docs/video.md for a real cluster.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Optional

from ..errors import FaceRefineError


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        raise FaceRefineError("--ray needs Ray Data: pip install 'ray[data]'  (or pip install facerefine[ray])") \
            from err
    return ray


class RestoreActor:
    """One Ray actor: models loaded once, then one file per row (``batch_size=1``)."""

    def __init__(self, options, threads: int = 1, overwrite: bool = False):
        import torch

        from .pipeline import build_steps
        torch.set_num_threads(max(1, int(threads)))
        self.options = options
        self.overwrite = overwrite
        self.steps = build_steps(options)
        self.pid = os.getpid()

    def __call__(self, batch: dict) -> dict:
        from .image_io import load_image, save_image
        from .output_paths import OutputNamer, write_output
        from .pipeline import restore_images
        rows = {"input": [], "output": [], "faces": [], "error": [], "seconds": [], "worker": [], "started": [],
                "finished": []}
        for src, dst in zip(batch["input"], batch["output"]):
            started = time.time()   # wall clock, comparable across actors on one machine (throughput bench)
            start = time.perf_counter()
            faces, error = 0, ""
            try:
                loaded = load_image(str(src))
                res = restore_images(loaded.image, self.options, steps=self.steps)
                dst = write_output(Path(str(dst)), save_image, res.images, alpha=loaded.alpha,
                                   bit_depth=loaded.bit_depth, like=loaded,
                                   namer=OutputNamer([src], overwrite=self.overwrite))
                faces = len(res.face_crops)
            except Exception as err:  # noqa: BLE001 - reported per file, the run goes on
                error = f"{type(err).__name__}: {err}" if not isinstance(err, FaceRefineError) else str(err)
            rows["input"].append(str(src))
            rows["output"].append(str(dst))
            rows["faces"].append(faces)
            rows["error"].append(error)
            rows["seconds"].append(time.perf_counter() - start)
            rows["worker"].append(self.pid)
            rows["started"].append(started)
            rows["finished"].append(time.time())
        return rows


def pending_jobs(inputs: list, targets: list) -> tuple[list[tuple[Path, Path]], list[tuple[Path, Path]]]:
    """Split (input, target) pairs into (to do, already written)."""
    todo, done = [], []
    for src, dst in zip(inputs, targets):
        (done if Path(dst).exists() else todo).append((Path(src), Path(dst)))
    return todo, done


def restore_on_ray(jobs: list[tuple[Path, Path]], options, address: Optional[str] = None,
                   actors: Optional[int] = None, cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0,
                   progress: Optional[Callable[[dict, int, int], None]] = None,
                   overwrite: bool = False) -> list[dict]:
    """Restore ``jobs`` = [(input, target), ...] on Ray; returns one dict per job (input, output, faces, error).

    address: None = the running Ray instance (``ray.init`` already called) or a new local one;
        "auto" or "ray://host:10001" = an existing cluster.
    actors: pool size (default: one per GPU when ``gpus_per_actor`` > 0, else cluster CPUs / cpus_per_actor).
    overwrite: replace existing targets; without it a target another run wrote meanwhile becomes the next
        counter name (the row's ``output``).
    """
    ray = require_ray()
    if not jobs:
        return []
    if not ray.is_initialized():
        ray.init(address=address or None, ignore_reinit_error=True, log_to_driver=False,
                 include_dashboard=False)
    resources = ray.cluster_resources()
    if actors is None:
        if gpus_per_actor > 0:
            actors = max(1, int(resources.get("GPU", 0) / gpus_per_actor))
        else:
            actors = max(1, int(resources.get("CPU", 1) / max(cpus_per_actor, 1e-3)))
    actors = max(1, min(int(actors), len(jobs)))
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = False
    ds = ray.data.from_items([{"input": str(s), "output": str(d)} for s, d in jobs],
                             override_num_blocks=min(len(jobs), max(actors * 4, 1)))
    ds = ds.map_batches(RestoreActor, fn_constructor_kwargs={"options": options, "overwrite": overwrite,
                                                             "threads": max(1, int(cpus_per_actor))},
                        batch_size=1, concurrency=actors, num_cpus=cpus_per_actor,
                        num_gpus=gpus_per_actor or None)
    results = []
    for row in ds.iter_rows():
        results.append(dict(row))
        if progress is not None:
            progress(results[-1], len(results), len(jobs))
    return results
