"""restore INPUT... -o OUT: crop -> restore steps (lookup, refine) -> paste back.

With --restorer none it only crops and pastes back (a geometry check and a no-op baseline).
The options are the table's controls (core/controls.py, front end "cli"), each step's in its own group.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from ..core import controls
from ..errors import FaceRefineError, OutputError
from .crop_cmd import CROP_GROUP, add_crop_flags, crop_options_from_args

log = logging.getLogger("facerefine")


def add_arguments(p) -> None:
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files or folders")
    p.add_argument("--sample", action="store_true",
                   help="also restore a public-domain sample photo (scikit-image's astronaut)")
    p.add_argument("-o", "--output", required=True,
                   help="output folder (results are <name>_restored.<ext>), or an image file name when there is "
                        "one input; an input is never written and a taken name gets a counter (_00001)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (inputs are still never written)")
    groups = {"refine": p.add_argument_group("refine"), "crop": p.add_argument_group(CROP_GROUP),
              "paste": p.add_argument_group("paste back")}
    controls.add_arguments(p, "cli", groups)  # type, default, range/choices and help come from core/controls.py
    add_crop_flags(groups["crop"])
    groups["paste"].add_argument("--save-mask", action="store_true", help="also write <name>_mask.png")
    from .restore_scale import add_arguments as add_scale_arguments
    add_scale_arguments(p)  # video files, --skip-existing, --ray (issue 17)


def _sample_image(folder, namer):
    """Write scikit-image's public-domain astronaut photo into the output folder and return its path.

    A file of that name that already holds the sample is reused; anything else there is left alone
    and the sample gets a counter name (core/output_paths)."""
    import numpy as np

    from ..core.image_io import load_image, save_image
    from ..core.output_paths import write_output
    try:
        from skimage import data
    except ImportError as err:
        raise FaceRefineError("--sample needs scikit-image (pip install scikit-image)") from err
    import torch
    pixels = data.astronaut()
    path = folder / "sample_astronaut_input.png"
    if path.is_file():
        try:
            same = np.array_equal(np.round(load_image(path).image[0].numpy() * 255).astype(np.uint8), pixels)
        except FaceRefineError:
            same = False
        if same:
            namer.add_input(path)
            return path
    path = write_output(namer.claim(path), save_image, torch.from_numpy(pixels).float() / 255.0, namer=namer)
    namer.add_input(path)
    return path


def run(args) -> dict:
    from ..core.batch_inputs import BatchReport, expand_inputs
    from ..core.output_paths import restore_targets
    from ..core.pipeline import resolve_device
    from . import restore_scale

    device = resolve_device(args.device)
    options = _options(args, device)
    report = BatchReport()
    listed = []  # files a folder holds that are not images, each with the reason
    inputs, missing = expand_inputs(args.inputs, listed) if args.inputs else ([], [])
    if not inputs and not args.sample:
        if missing:
            raise FaceRefineError("; ".join(f["error"] for f in missing))
        raise FaceRefineError("no input images: pass image files or folders, or --sample")
    # decide every output before loading any model: a bad -o costs no work
    out = Path(args.output).expanduser()
    videos, inputs = restore_scale.split_videos(inputs)
    if videos:  # video files: decoded, restored along face tracks and re-encoded (core.video)
        if inputs or args.sample:
            raise FaceRefineError("restore video files and images in separate runs")
        report.extend(missing)
        return restore_scale.run_videos(args, options, videos, report)
    skipped = []
    if args.skip_existing or restore_scale.wants_ray(args):  # resume: results already written are skipped
        inputs, skipped = restore_scale.skip_existing(inputs, out)
        for s in skipped:
            print(f"{s['input']}: skipped, {s['output']} exists", file=sys.stderr)
    inputs = _with_sample(args, inputs, out)
    targets, namer = restore_targets(inputs, out, overwrite=args.overwrite)
    for note in namer.notes:
        print(f"note: {note}", file=sys.stderr)
    report.extend(missing)
    if restore_scale.wants_ray(args):
        return restore_scale.run_ray(args, options, inputs, targets, report, namer, skipped)
    results, timings = _restore_files(args, options, list(zip(inputs, targets)), namer, report)
    report.summary(len(inputs) + len(missing))
    if not results and report.failed:
        raise FaceRefineError(f"all {len(report.failed)} input(s) failed: "
                              + "; ".join(f"{f['input']}: {f['error']}" for f in report.failed))
    return {"ok": not report.failed, "restorer": args.restorer, "device": device, "results": results,
            "failed": report.failed, "exit_code": report.exit_code, "notes": namer.notes, "skipped": listed + skipped,
            "timings": {k: round(v, 4) for k, v in timings.items()},
            "faces": sum(r["faces"] for r in results)}


def _options(args, device: str):
    """RestoreOptions from the table's controls on the command line (the crop step's flags too)."""
    from ..core.paste.options import PasteOptions
    from ..core.pipeline import RestoreOptions
    values = {**controls.values_from_args(args), "device": device}
    return RestoreOptions.from_values(crop=crop_options_from_args(args, device), paste=PasteOptions(device=device),
                                      **values)


def _with_sample(args, inputs: list, out: Path) -> list:
    """The inputs, plus the sample photo written next to the results with --sample."""
    from ..core.output_paths import OutputNamer, describe_os_error, names_image_file, prepare_folder
    if not args.sample:
        return inputs
    if names_image_file(out) and not out.is_dir() and inputs:
        raise OutputError(f"-o {out} names one image file but there are {len(inputs) + 1} inputs (with --sample); "
                          f"give a folder instead")
    folder = out.parent if names_image_file(out) and not out.is_dir() else out
    try:
        return inputs + [_sample_image(prepare_folder(folder), OutputNamer(inputs))]
    except OSError as err:
        raise OutputError(describe_os_error(err)) from err


def _restore_files(args, options, jobs: list, namer, report) -> tuple[list, dict]:
    """Restore each (input, target); one bad file is reported and the others go on."""
    from ..core.batch_inputs import error_text
    from ..core.pipeline import build_steps
    steps = build_steps(options)  # load restorer/refiner once for all images
    results, timings = [], {}
    for path, target in jobs:
        written = []
        try:  # one bad file must not cost the others
            entry = _restore_file(path, target, (options, steps, timings), namer, args.save_mask, written)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # noqa: BLE001 - reported per file, the batch goes on
            if isinstance(err, FaceRefineError) and not results and not report.failed and len(jobs) == 1:
                raise  # the only input failed: one clear error (often a setting, e.g. a reference with no face)
            log.debug("FaceRefine: %s failed", path, exc_info=True)
            report.add(path, err if not written else f"{error_text(err)} (the image itself was written to "
                                                     f"{written[0]})")
            continue
        results.append(entry)
        if not args.json:
            print(f"{path} -> {entry['output']}: {entry['faces']} face(s)"
                  + "".join(f"\n  warning: {w}" for w in entry["warnings"]))
    return results, timings


def _restore_file(path, target, run, namer, save_mask: bool, written: list) -> dict:
    """One image restored and written (and its mask with --save-mask); ``written`` lists the files so far."""
    from ..core.image_io import load_image, output_notes, save_image
    from ..core.output_paths import write_output
    from ..core.pipeline import restore_images
    options, steps, timings = run
    loaded = load_image(path)
    res = restore_images(loaded.image, options, steps=steps, timings=timings)
    target = write_output(target, save_image, res.images, alpha=loaded.alpha, bit_depth=loaded.bit_depth,
                          like=loaded, namer=namer)  # another run may have taken the name meanwhile: a counter
    written.append(target)
    entry = {"input": str(path), "output": str(target), "faces": len(res.face_crops),
             "history": list(res.face_crops.history), "warnings": res.warnings + output_notes(loaded, target)}
    if save_mask:
        mask_path = write_output(namer.claim(target.with_name(f"{target.stem}_mask.png")), save_image,
                                 res.masks[0][..., None].expand(-1, -1, 3), namer=namer)
        written.append(mask_path)
        entry["mask"] = str(mask_path)
    return entry
