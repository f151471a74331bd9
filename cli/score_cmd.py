"""``python -m facerefine score IMAGE… --metric NAME [--faces] [--json]``."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("images", nargs="+", help="image files or folders")
    parser.add_argument("--metric", default="auto",
                        help="face-iqa (default), face-niqe, piqe (offline), topiq_nr-face, musiq, clipiqa, maniqa, niqe, "
                             "brisque, or auto (= face-iqa)")
    parser.add_argument("--faces", action="store_true",
                        help="detect and align the faces (core/crop) and score each face instead of the image")
    parser.add_argument("--detector", default=None, help="face detector for --faces (see `crop --help`)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")


def run(args) -> dict:
    from ..core.batch_inputs import BatchReport, expand_inputs
    from ..core.image_io import load_image
    from ..core.score import get_metric, score_face_crops, score_images
    from ..errors import FaceRefineError

    paths, missing = expand_inputs(args.images)
    metric = get_metric(args.metric, args.device, face_input=args.faces)
    report = BatchReport()
    report.extend(missing)
    results = []
    for path in paths:
        try:  # one bad file must not stop the others
            entry = _score_one(path, metric, args, load_image, score_face_crops, score_images)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # noqa: BLE001 - reported per file, the batch goes on
            report.add(path, err)
            continue
        results.append(entry)
        if args.json:
            continue
        if args.faces:
            mean = "" if entry["raw"] is None else (f"  mean raw {entry['raw']:.4f}  "
                                                     f"normalized {entry['normalized']:.4f}")
            print(f"{path}: {metric.name} {len(entry['faces'])} face(s)" + (mean or "  no face"))
            for f in entry["faces"]:
                x0, y0, x1, y1 = f["bbox"]
                print(f"  face {f['face']} at ({x0:.0f},{y0:.0f})-({x1:.0f},{y1:.0f}): "
                      f"raw {f['raw']:.4f}  normalized {f['normalized']:.4f}")
        else:
            print(f"{path}: {metric.name} raw {entry['raw']:.4f}  normalized {entry['normalized']:.4f}")
    report.summary(len(paths) + len(missing))
    if not results and report.failed and len(report.failed) == 1:
        raise FaceRefineError(report.failed[0]["error"])
    return {"ok": not report.failed, "metric": metric.name, "lower_better": metric.lower_better,
            "range": list(metric.info.range), "results": results, "failed": report.failed,
            "exit_code": report.exit_code}


def _score_one(path, metric, args, load_image, score_face_crops, score_images) -> dict:
    from ..errors import FaceRefineError
    image = load_image(path).image
    entry = {"path": str(path), "metric": metric.name, "lower_better": metric.lower_better}
    if args.faces:
        try:
            from ..core.crop.options import CropOptions
            from ..core.crop.step import crop_faces
        except ImportError as err:
            raise FaceRefineError(f"--faces needs the crop step, which is not available: {err}") from err
        device = args.device if args.device in ("cpu", "cuda") else "cpu"
        opts = CropOptions(detector=args.detector or "auto", device=device)
        crops = score_face_crops(crop_faces(image, opts), metric)
        faces = []
        for i, (face, q) in enumerate(zip(crops.faces, crops.latest_quality(metric.name))):
            faces.append({"face": i, "bbox": [round(float(v), 1) for v in face.bbox],
                          "raw": q.raw, "normalized": q.normalized})
        entry["faces"] = faces
        entry["raw"] = sum(f["raw"] for f in faces) / len(faces) if faces else None
        entry["normalized"] = sum(f["normalized"] for f in faces) / len(faces) if faces else None
    else:
        q = score_images(image, metric)[0]
        entry.update(raw=q.raw, normalized=q.normalized)
    return entry
