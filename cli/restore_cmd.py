"""restore INPUT... -o OUT: crop -> restore steps (lookup, refine) -> paste back.

With --restorer none it only crops and pastes back (a geometry check and a no-op baseline).
"""
from __future__ import annotations

import logging
import sys

from ..errors import FaceRefineError
from .crop_cmd import add_crop_arguments, crop_options_from_args

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
    p.add_argument("--restorer", default="auto",
                   help="auto (a community restorer you have, else the embedded compact model), a registry name, "
                        "a weights path, or none (crop + paste only)")
    p.add_argument("--quality", type=float, default=1.0, help="quality slider 0..1 (IQPFR)")
    p.add_argument("--fidelity", type=float, default=0.5, help="fidelity weight 0..1 (higher = closer to input)")
    p.add_argument("--lookup-mode", default="auto", choices=["auto", "trained", "training-free", "off"],
                   help="quality slider: trained conditioning, critic-steered codes (training-free) or off")
    p.add_argument("--quality-condition", default=None,
                   help="IQPFR quality-conditioning weights for a CodeFormer restorer (name or path)")
    p.add_argument("--critic", default=None, help="NR-IQA critic for training-free steering (default face-niqe)")
    p.add_argument("--refine-steps", type=int, default=0,
                   help="identity-guided latent refine steps (0 = off; 10-20 recommended)")
    p.add_argument("--identity-strength", type=float, default=None,
                   help="identity guidance strength (default 0.5 when refining; 0 = prior only)")
    p.add_argument("--reference", default=None, help="reference photo of the same person (identity target)")
    g = p.add_argument_group("refine")
    g.add_argument("--refine-strength", type=float, default=0.4,
                   help="how much of the lookup latent is re-noised, 0..1 (SDEdit strength)")
    g.add_argument("--sampler", default="dpmpp_2m", choices=["dpmpp_2m", "euler", "heun", "ddim"])
    g.add_argument("--latent-prior", default=None,
                   help="latent prior weights (name or path; 'none' = identity guidance only)")
    g.add_argument("--id-model", default="auto",
                   help="identity network for guidance: auto (ArcFace if recognition_arcface_ir_se50.pth is on "
                        "disk, else the embedded dlib ResNet, no download), arcface, dlib, or a weights path")
    g.add_argument("--identity-recovery", default=None, help="trained Identity Recovery Network + mask file")
    g.add_argument("--identity-target", default="auto", choices=["auto", "reference", "recovery", "lq"],
                   help="auto = reference if given, else the IRN if trained, else the degraded face")
    g.add_argument("--guidance-steps", type=int, default=None,
                   help="refine steps that compute a fresh identity gradient (default 1; = --refine-steps for "
                        "every step, slower: each costs a decoder forward+backward)")
    p.add_argument("--device", default="auto", help="cpu | cuda | auto")
    p.add_argument("--seed", type=int, default=0)
    add_crop_arguments(p)
    g = p.add_argument_group("paste back")
    g.add_argument("--mask", default="auto", choices=["auto", "landmarks", "parsenet", "bisenet", "box"],
                   help="auto = face parsing if its weights are present, else the landmark face outline")
    g.add_argument("--erode", type=float, default=8.0, help="shrink the mask (pixels at 512 crop scale)")
    g.add_argument("--feather", type=float, default=16.0, help="soft edge width (pixels at 512 crop scale)")
    g.add_argument("--protect-hair", action="store_true", help="keep the original hair and hairline")
    g.add_argument("--visibility", type=float, default=1.0, help="0 = original face, 1 = restored face")
    g.add_argument("--color-correction", default="lab", choices=["none", "lab", "lowfreq"])
    g.add_argument("--save-mask", action="store_true", help="also write <name>_mask.png")


def _sample_image(folder, namer):
    """Write scikit-image's public-domain astronaut photo into the output folder and return its path.

    A file of that name that already holds the sample is reused; anything else there is left alone
    and the sample gets a counter name (core/output_paths)."""
    import numpy as np

    from ..core.image_io import load_image, save_image
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
    path = namer.claim(path)
    save_image(path, torch.from_numpy(pixels).float() / 255.0)
    namer.add_input(path)
    return path


def run(args) -> dict:
    from pathlib import Path

    from ..core.batch import BatchReport, error_text, expand_inputs
    from ..core.image_io import load_image, save_image
    from ..core.output_paths import (OutputNamer, describe_os_error, names_image_file, prepare_folder,
                                     restore_targets)
    from ..errors import OutputError
    from ..core.paste import PasteOptions
    from ..core.pipeline import RestoreOptions, build_steps, resolve_device, restore_images

    device = resolve_device(args.device)
    options = RestoreOptions(
        restorer=args.restorer, quality=args.quality, fidelity=args.fidelity, refine_steps=args.refine_steps,
        identity_strength=(args.identity_strength if args.identity_strength is not None
                           else (0.5 if args.refine_steps > 0 else 0.0)),
        reference=args.reference, device=device, seed=args.seed,
        refine_strength=args.refine_strength, refine_sampler=args.sampler, latent_prior=args.latent_prior,
        id_model=args.id_model, identity_recovery=args.identity_recovery, identity_target=args.identity_target,
        refine_guidance_steps=args.guidance_steps,
        lookup_mode=args.lookup_mode, quality_condition=args.quality_condition, critic=args.critic,
        crop=crop_options_from_args(args, device),
        paste=PasteOptions(mask=args.mask, erode=args.erode, feather=args.feather, protect_hair=args.protect_hair,
                           visibility=args.visibility, color_correction=args.color_correction, device=device))
    report = BatchReport()
    inputs, missing = expand_inputs(args.inputs) if args.inputs else ([], [])
    if not inputs and not args.sample:
        if missing:
            raise FaceRefineError("; ".join(f["error"] for f in missing))
        raise FaceRefineError("no input images: pass image files or folders, or --sample")
    # decide every output before loading any model: a bad -o costs no work
    out = Path(args.output).expanduser()
    if args.sample and names_image_file(out) and not out.is_dir() and inputs:
        raise OutputError(f"-o {out} names one image file but there are {len(inputs) + 1} inputs (with --sample); "
                          f"give a folder instead")
    if args.sample:
        folder = out.parent if names_image_file(out) and not out.is_dir() else out
        try:
            inputs.append(_sample_image(prepare_folder(folder), OutputNamer(inputs)))
        except OSError as err:
            raise OutputError(describe_os_error(err)) from err
    targets, namer = restore_targets(inputs, out, overwrite=args.overwrite)
    for note in namer.notes:
        print(f"note: {note}", file=sys.stderr)
    report.extend(missing)
    steps = build_steps(options)  # load restorer/refiner once for all images
    results, timings = [], {}
    for path, target in zip(inputs, targets):
        written, mask_path = [], None
        try:  # one bad file must not cost the others
            loaded = load_image(path)
            res = restore_images(loaded.image, options, steps=steps, timings=timings)
            written.append(save_image(target, res.images, alpha=loaded.alpha, bit_depth=loaded.bit_depth))
            if args.save_mask:
                mask_path = namer.claim(target.with_name(f"{target.stem}_mask.png"))
                written.append(save_image(mask_path, res.masks[0][..., None].expand(-1, -1, 3)))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # noqa: BLE001 - reported per file, the batch goes on
            if isinstance(err, FaceRefineError) and not results and not report.failed and len(inputs) == 1:
                raise  # the only input failed: one clear error (often a setting, e.g. a reference with no face)
            log.debug("FaceRefine: %s failed", path, exc_info=True)
            report.add(path, err if not written else f"{error_text(err)} (the image itself was written to "
                                                     f"{written[0]})")
            continue
        entry = {"input": str(path), "output": str(target), "faces": len(res.face_crops),
                 "history": list(res.face_crops.history), "warnings": res.warnings}
        if mask_path is not None:
            entry["mask"] = str(mask_path)
        results.append(entry)
        if not args.json:
            print(f"{path} -> {target}: {entry['faces']} face(s)" + "".join(f"\n  warning: {w}" for w in res.warnings))
    report.summary(len(inputs) + len(missing))
    if not results and report.failed:
        raise FaceRefineError(f"all {len(report.failed)} input(s) failed: "
                              + "; ".join(f"{f['input']}: {f['error']}" for f in report.failed))
    return {"ok": not report.failed, "restorer": args.restorer, "device": device, "results": results,
            "failed": report.failed, "exit_code": report.exit_code, "notes": namer.notes,
            "timings": {k: round(v, 4) for k, v in timings.items()},
            "faces": sum(r["faces"] for r in results)}
