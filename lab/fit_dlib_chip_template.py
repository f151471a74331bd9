"""Where the crop step's 5 landmarks fall in dlib's 150x150 face chip (padding 0.25).

dlib frames its recognition chips from its own 5-point shape predictor (eye corners and the base of
the nose, ``get_face_chip_details(shape, 150, 0.25)``). FaceRefine has other 5 points (eye centres,
nose tip, mouth corners from MTCNN/RetinaFace), so the refine step cannot reuse dlib's template.
This script runs dlib's detector + 5-point predictor and FaceRefine's crop step on the London
*training* identities, maps FaceRefine's landmarks into each dlib chip and prints their mean: the
constant ``DLIB_CHIP_LANDMARKS`` in models/arch/identity.py. It also checks the chip mapping by
warping the image with it and comparing with dlib's own chip.

    python -m facerefine.lab.fit_dlib_chip_template [--limit N]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def dlib_models_dir() -> Path:
    import importlib.util
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None:
        raise SystemExit("needs the eval extra: pip install dlib-bin face-recognition-models")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def chip_to_image(details) -> np.ndarray:
    """2x3 affine chip pixel -> image pixel of a dlib chip_details (dlib's get_mapping_to_chip, inverted)."""
    r = details.rect
    cx, cy = (r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2
    a = details.angle
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])

    def rotated(x, y):
        return rot @ np.array([x - cx, y - cy]) + np.array([cx, cy])
    src = np.array([[0, 0], [details.cols - 1, 0], [details.cols - 1, details.rows - 1]], np.float64)
    dst = np.array([rotated(r.left(), r.top()), rotated(r.right(), r.top()), rotated(r.right(), r.bottom())])
    a_mat = np.hstack([src, np.ones((3, 1))])
    return np.linalg.solve(a_mat, dst).T  # [2,3]


def main(argv=None) -> int:
    import cv2
    import dlib
    import torch

    from ..core.crop.options import CropOptions

    from ..core.crop.step import crop_faces
    from .datasets import london_split
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--size", type=int, default=150)
    ap.add_argument("--padding", type=float, default=0.25)
    args = ap.parse_args(argv)
    models = dlib_models_dir()
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    files = london_split()["train_neutral"]
    files = files[:args.limit] if args.limit else files
    points, chip_err = [], []
    for f in files:
        img = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
        dets = detector(img, 1)
        crops = crop_faces(torch.from_numpy(img).float()[None] / 255, CropOptions())
        if len(dets) != 1 or len(crops) != 1:
            continue
        shape = predictor(img, dets[0])
        details = dlib.get_face_chip_details(shape, args.size, args.padding)
        c2i = chip_to_image(details)
        i2c = cv2.invertAffineTransform(c2i)
        lm = np.asarray(crops.faces[0].landmarks, np.float64)
        points.append(lm @ i2c[:, :2].T + i2c[:, 2])
        mine = cv2.warpAffine(img, i2c, (args.size, args.size), flags=cv2.INTER_AREA)
        theirs = dlib.get_face_chip(img, shape, args.size, args.padding)
        chip_err.append(float(np.abs(mine.astype(np.float32) - theirs.astype(np.float32)).mean()))
    pts = np.stack(points)
    mean, std = pts.mean(0), pts.std(0)
    print(json.dumps({"faces": len(points), "size": args.size, "padding": args.padding,
                      "landmarks_in_chip": np.round(mean, 2).tolist(), "std_px": np.round(std, 2).tolist(),
                      "chip_mapping_mean_abs_error_grey_levels": round(float(np.mean(chip_err)), 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
