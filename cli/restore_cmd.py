"""restore INPUT... -o OUT: crop -> restore steps (lookup, refine) -> paste back.

With --restorer none it only crops and pastes back (a geometry check and a no-op baseline).
"""
from __future__ import annotations

import sys

from ..errors import FaceRefineError
from .crop_cmd import add_crop_arguments, crop_options_from_args


def add_arguments(p) -> None:
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files or folders")
    p.add_argument("--sample", action="store_true",
                   help="also restore a public-domain sample photo (scikit-image's astronaut)")
    p.add_argument("-o", "--output", required=True,
                   help="output folder (or a file name when there is one input image)")
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
    g.add_argument("--id-model", default="arcface", help="ArcFace weights (name or path)")
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


def _outputs(inputs, output):
    from pathlib import Path

    from ..core.image_io import IMAGE_SUFFIXES
    out = Path(output)
    if len(inputs) == 1 and out.suffix.lower() in IMAGE_SUFFIXES and not out.is_dir():
        return [out]
    out.mkdir(parents=True, exist_ok=True)
    targets = [out / p.name for p in inputs]
    # never overwrite an input: restoring a folder into itself writes <name>_restored.<ext>
    return [t.with_name(f"{t.stem}_restored{t.suffix}") if t.resolve() == Path(p).resolve() else t
            for t, p in zip(targets, inputs)]


def _sample_image(output):
    """Write scikit-image's public-domain astronaut photo next to the outputs and return its path."""
    from pathlib import Path

    from ..core.image_io import IMAGE_SUFFIXES
    try:
        from skimage import data
    except ImportError as err:
        raise FaceRefineError("--sample needs scikit-image (pip install scikit-image)") from err
    import cv2
    out = Path(output)
    folder = out.parent if out.suffix.lower() in IMAGE_SUFFIXES else out
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sample_astronaut_input.png"
    cv2.imwrite(str(path), data.astronaut()[..., ::-1])
    return path


def run(args) -> dict:
    from ..core.image_io import list_images, load_image, save_image
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
    inputs = list_images(args.inputs) if args.inputs else []
    if args.sample:
        inputs.append(_sample_image(args.output))
    if not inputs:
        raise FaceRefineError("no input images: pass image files or folders, or --sample")
    steps = build_steps(options)  # load restorer/refiner once for all images
    targets = _outputs(inputs, args.output)
    results, failed, timings = [], [], {}
    for path, target in zip(inputs, targets):
        try:  # one bad file must not cost the others
            loaded = load_image(path)
            res = restore_images(loaded.image, options, steps=steps, timings=timings)
            save_image(target, res.images, alpha=loaded.alpha, bit_depth=loaded.bit_depth)
        except FaceRefineError as err:
            if not results and len(failed) + 1 == len(inputs):
                raise  # nothing succeeded: one clear error (often a setting, e.g. a reference with no face)
            failed.append({"input": str(path), "error": str(err)})
            print(f"{path}: error: {err}", file=sys.stderr)
            continue
        entry = {"input": str(path), "output": str(target), "faces": len(res.face_crops),
                 "history": list(res.face_crops.history), "warnings": res.warnings}
        if args.save_mask:
            mask_path = target.with_name(f"{target.stem}_mask.png")
            save_image(mask_path, res.masks[0][..., None].expand(-1, -1, 3))
            entry["mask"] = str(mask_path)
        results.append(entry)
        if not args.json:
            print(f"{path} -> {target}: {entry['faces']} face(s)" + "".join(f"\n  warning: {w}" for w in res.warnings))
    return {"ok": not failed, "restorer": args.restorer, "device": device, "results": results, "failed": failed,
            "exit_code": 1 if failed else 0,
            "timings": {k: round(v, 4) for k, v in timings.items()},
            "faces": sum(r["faces"] for r in results)}
