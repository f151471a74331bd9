"""crop IMAGE... --out DIR: aligned face crops + JSON with bbox, landmarks, score and crop path."""
from __future__ import annotations

import sys

CROP_GROUP = "face detection and alignment"


def add_crop_flags(g) -> None:
    """The crop step's flags that are not in the table of controls (shared with `restore`)."""
    g.add_argument("--det-threshold", type=float, default=None, help="detector confidence threshold")
    g.add_argument("--min-face-size", type=float, default=0.0, help="drop faces smaller than this (pixels)")
    g.add_argument("--max-faces", type=int, default=0, help="keep at most N faces per image (0 = all)")
    g.add_argument("--sort", default="largest", choices=["largest", "left_to_right", "confidence"])
    g.add_argument("--face-index", default=None, help="pick faces by index after sorting, e.g. 0 or 0,2")
    g.add_argument("--only-center-face", action="store_true", help="keep only the face nearest the centre")
    g.add_argument("--detect-max-side", type=int, default=1280,
                   help="detect on a copy at most this large (crops come from the full image)")


def crop_options_from_args(args, device: str):
    """CropOptions from the crop step's controls (core/controls.py) and flags."""
    from ..core import controls
    from ..core.crop.options import CropOptions
    table = {c.option.split(".")[1]: getattr(args, c.name) for c in controls.CONTROLS
             if c.option.startswith("crop.") and hasattr(args, c.name)}
    return CropOptions(**table, det_threshold=args.det_threshold, min_face_size=args.min_face_size,
                       max_faces=args.max_faces, sort=args.sort, face_index=args.face_index,
                       only_center_face=args.only_center_face, device=device, detect_max_side=args.detect_max_side)


def add_arguments(p) -> None:
    from ..core import controls
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    p.add_argument("--out", required=True,
                   help="folder for the crops (<name>_faceNN.png; a taken name gets a counter, _00001)")
    p.add_argument("--overwrite", action="store_true", help="replace existing crop files (inputs never)")
    controls.add_argument(p, "device")
    g = p.add_argument_group(CROP_GROUP)
    for c in controls.CONTROLS:  # the crop step's controls (detector, crop size...)
        if c.option.startswith("crop."):
            controls.add_argument(g, c.name)
    add_crop_flags(g)


def run(args) -> dict:
    import warnings

    from ..core.batch_inputs import BatchReport, expand_inputs
    from ..core.crop.step import align_faces, detect_faces
    from ..core.image_io import load_image, save_image
    from ..core.output_paths import OutputNamer, check_name, prepare_folder, write_output
    from ..core.pipeline import resolve_device

    device = resolve_device(args.device)
    options = crop_options_from_args(args, device)
    paths, missing = expand_inputs(args.images)
    out_dir = prepare_folder(args.out, "--out")  # before any work
    for path in paths:
        check_name(out_dir / f"{path.stem}_face00.png")
    namer = OutputNamer(paths, overwrite=args.overwrite)
    report = BatchReport()
    report.extend(missing)
    results, total = [], 0
    for path in paths:
        written = []
        try:  # one bad file must not stop the others
            loaded = load_image(path)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                crops = align_faces(loaded.image, detect_faces(loaded.image, options), options)
            notes = [str(w.message) for w in caught]
            if crops.is_empty:
                notes.append("no face found")
            faces = []
            for k, face in enumerate(crops.faces):
                crop_path = write_output(namer.claim(out_dir / f"{path.stem}_face{k:02d}.png"), save_image,
                                         crops.crops[k].permute(1, 2, 0),
                                         bit_depth=16 if loaded.bit_depth == 16 else 8, namer=namer)
                written.append(crop_path)
                faces.append({"index": k, "bbox": [round(v, 2) for v in face.bbox],
                              "landmarks": face.landmarks.round(2).tolist(), "score": round(face.score, 5),
                              "crop": str(crop_path), "affine": face.affine.round(6).tolist()})
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # noqa: BLE001 - reported per file, the batch goes on
            report.add(path, err)
            if written:
                print(f"  {len(written)} crop(s) of it were written before the error", file=sys.stderr)
            continue
        total += len(faces)
        results.append({"path": str(path), "size": list(loaded.size), "faces": faces, "warnings": notes})
        if not args.json:
            print(f"{path}: {len(faces)} face(s)" + "".join(_face_lines(f) for f in faces)
                  + "".join(f"\n  warning: {n}" for n in notes))
    for note in namer.notes:
        print(f"note: {note}", file=sys.stderr)
    report.summary(len(paths) + len(missing))
    return {"ok": not report.failed, "crop_size": options.crop_size, "detector": _detector_name(options.detector),
            "faces": total, "images": results, "failed": report.failed, "notes": namer.notes,
            "exit_code": report.exit_code}


def _face_lines(face: dict) -> str:
    """Plain-text lines for one face: box, score, the five landmarks and the crop file."""
    x0, y0, x1, y1 = face["bbox"]
    points = "  ".join(f"({x:.1f},{y:.1f})" for x, y in face["landmarks"])
    return (f"\n  face {face['index']}: box ({x0:.1f},{y0:.1f})-({x1:.1f},{y1:.1f})  score {face['score']:.3f}"
            f"\n    landmarks (left eye, right eye, nose, mouth left, mouth right): {points}"
            f"\n    crop {face['crop']}")


def _detector_name(name: str) -> str:
    from ..core.crop.detectors import resolve_name
    return resolve_name(name)
