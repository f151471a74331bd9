"""`restore` extras: video files (PyAV) and scale-out over a folder on Ray (issue 17).

Kept apart from restore_cmd so that command stays small; restore_cmd calls in here for video inputs,
``--skip-existing`` and ``--ray``.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import FaceRefineError


def add_arguments(p) -> None:
    g = p.add_argument_group("video (PyAV: pip install facerefine[video])")
    g.add_argument("--temporal", type=float, default=0.7,
                   help="video: how much of the previous frame's result each frame of a face track keeps, 0..1 "
                        "(0 = every frame on its own)")
    g.add_argument("--temporal-mode", default="flow", choices=("flow", "latent", "flow+latent"),
                   help="video: flow = the previous restored face warped by optical flow and blended where it agrees "
                        "(default); latent = the previous latent/codes blended without a warp; flow+latent = both")
    g.add_argument("--lookahead", action="store_true",
                   help="video: offline landmark smoothing with look-ahead (decodes the clip twice)")
    g.add_argument("--no-smooth", action="store_true", help="video: no landmark smoothing")
    g.add_argument("--video-chunk", type=int, default=8, help="video: frames per batch (memory bound)")
    g.add_argument("--crf", type=int, default=18, help="video: output quality (x264 CRF, lower = better)")
    g.add_argument("--no-audio", action="store_true", help="video: drop the audio track")
    g = p.add_argument_group("scale-out (Ray: pip install facerefine[ray])")
    g.add_argument("--ray", action="store_true", help="restore the files on Ray Data actors (local Ray if no address)")
    g.add_argument("--ray-address", default=None, help="existing Ray cluster: auto or ray://HOST:10001 (implies --ray)")
    g.add_argument("--ray-actors", type=int, default=None,
                   help="actors (default: one per GPU with --ray-gpus, else CPUs / --ray-cpus)")
    g.add_argument("--ray-cpus", type=float, default=1.0, help="CPUs (and torch threads) per actor")
    g.add_argument("--ray-gpus", type=float, default=0.0, help="GPUs per actor (1 = one actor per GPU)")
    g.add_argument("--skip-existing", action="store_true",
                   help="skip inputs whose result already exists (resume); always on with --ray")


def wants_ray(args) -> bool:
    return bool(getattr(args, "ray", False) or getattr(args, "ray_address", None))


def split_videos(inputs: list) -> tuple[list[Path], list[Path]]:
    from ..core.video.io import is_video
    videos = [p for p in inputs if is_video(p)]
    return videos, [p for p in inputs if not is_video(p)]


def skip_existing(inputs: list[Path], output) -> tuple[list[Path], list[dict]]:
    """Drop inputs whose result (the name a fresh run would write) exists already."""
    from ..core.output_paths import restore_targets
    if not inputs:
        return inputs, []
    plain, _ = restore_targets(inputs, output, overwrite=True)
    keep, skipped = [], []
    for src, dst in zip(inputs, plain):
        if dst.exists():
            skipped.append({"input": str(src), "output": str(dst)})
        else:
            keep.append(src)
    return keep, skipped


def run_ray(args, options, inputs: list[Path], targets: list[Path], report, namer, skipped: list[dict]) -> dict:
    from ..core.ray_restore import restore_on_ray
    jobs = list(zip(inputs, targets))

    def show(row, done, total):
        if not args.json:
            status = f"error: {row['error']}" if row["error"] else f"{row['faces']} face(s)"
            print(f"[{done}/{total}] {row['input']} -> {row['output']}: {status}")

    rows = restore_on_ray(jobs, options, address=args.ray_address, actors=args.ray_actors,
                          cpus_per_actor=args.ray_cpus, gpus_per_actor=args.ray_gpus, progress=show,
                          overwrite=args.overwrite)
    results = []
    for row in rows:
        if row["error"]:
            report.add(row["input"], row["error"])
        else:
            results.append({"input": row["input"], "output": row["output"], "faces": int(row["faces"])})
    report.summary(len(inputs) + len(skipped))
    if not results and report.failed and not skipped:
        raise FaceRefineError(f"all {len(report.failed)} input(s) failed: "
                              + "; ".join(f"{f['input']}: {f['error']}" for f in report.failed))
    return {"ok": not report.failed, "restorer": args.restorer, "device": options.device, "ray": True,
            "actors": len({r["worker"] for r in rows}), "results": results, "skipped": skipped,
            "failed": report.failed, "exit_code": report.exit_code, "notes": namer.notes,
            "faces": sum(r["faces"] for r in results)}


def _video_targets(videos: list[Path], output, overwrite: bool) -> tuple[list[Path], object]:
    from ..core.output_paths import OutputNamer, prepare_folder
    from ..core.video.io import VIDEO_SUFFIXES
    from ..errors import OutputError
    out = Path(output).expanduser()
    namer = OutputNamer(videos, overwrite=overwrite)
    if out.suffix.lower() in VIDEO_SUFFIXES and not out.is_dir():
        if len(videos) != 1:
            raise OutputError(f"-o {out} names one video file but there are {len(videos)} inputs; give a folder")
        prepare_folder(out.parent if str(out.parent) else ".")
        return [namer.claim(out)], namer
    prepare_folder(out)
    return [namer.claim(out / f"{v.stem}_restored{v.suffix}") for v in videos], namer


def run_videos(args, options, videos: list[Path], report) -> dict:
    """Restore each video file (frame rate and audio kept), with a progress bar per clip."""
    from tqdm import tqdm

    from ..core.video import VideoOptions, restore_video
    from ..core.video.io import require_av
    require_av()
    out = Path(args.output)
    if getattr(args, "skip_existing", False):
        todo = []
        for v in videos:
            plain = out if out.suffix.lower() == v.suffix.lower() and len(videos) == 1 else \
                out / f"{v.stem}_restored{v.suffix}"
            if plain.exists():
                print(f"{v}: skipped, {plain} exists", file=sys.stderr)
            else:
                todo.append(v)
        videos = todo
    targets, namer = _video_targets(videos, out, getattr(args, "overwrite", False))
    for note in namer.notes:
        print(f"note: {note}", file=sys.stderr)
    video = VideoOptions(chunk=args.video_chunk, temporal=args.temporal, temporal_mode=args.temporal_mode,
                         smooth=not args.no_smooth,
                         lookahead=args.lookahead, crf=args.crf, audio=not args.no_audio)
    results = []
    restorer = None
    if options.wants_restorer and video.temporal > 0:
        from ..models.restorers import load_restorer
        from ..core.pipeline import resolve_device
        restorer = load_restorer(options.lookup.restorer, resolve_device(options.device),
                                 quality_condition=options.lookup.quality_condition or None)
    for src, dst in zip(videos, targets):
        bar = tqdm(total=0, unit="frame", desc=src.name, file=sys.stderr, disable=args.json)

        def progress(done, total, bar=bar):
            bar.total = total
            bar.n = done
            bar.refresh()
        try:
            res = restore_video(src, dst, options, video, progress=progress, restorer=restorer, namer=namer)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # noqa: BLE001 - reported per file
            if isinstance(err, FaceRefineError) and len(videos) == 1:
                raise
            report.add(src, err)
            continue
        finally:
            bar.close()
        results.append(res)
        if not args.json:
            print(f"{src} -> {res['output']}: {res['frames']} frames at {res['fps']:.3f} fps, "
                  f"{res['faces']} face(s) on {res['tracks']} track(s)"
                  + "".join(f"\n  warning: {w}" for w in res["warnings"]))
    report.summary(len(videos))
    return {"ok": not report.failed, "restorer": args.restorer, "device": options.device, "results": results,
            "failed": report.failed, "exit_code": report.exit_code, "notes": namer.notes,
            "faces": sum(r["faces"] for r in results)}
