"""Before/after grid of real low-quality faces (issue 25's "looked at" check).

    python -m facerefine.lab.eval.real_lq_grid --restorers facerefine-compact-v2,PATH --out docs/img/real_lq_grid.jpg

Faces: UTKFace's aligned 200² web photos (../shared/data/utkface; real damage: old scans, web JPEG, blur,
noise; non-commercial research use). The ``--faces`` blurriest of the first ``--pool`` files by name (lowest
variance of the Laplacian of the central luma) are picked, so the choice is fixed and nobody picks
flattering faces. Each photo is enlarged ``--upscale`` times with bicubic (what an upscaler before "restore
faces" does), then restored by the whole chain (detect, align, lookup, paste back) at the defaults.
Columns: LQ (bicubic) | classical denoise + unsharp (the benchmark's "heavy" parameters, on the whole photo)
| each restorer. Rows: faces. Writes the grid and ``<out>.json`` (files and notes).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch


def pick_blurriest(folder: Path, faces: int, pool: int) -> list[Path]:
    """The ``faces`` files with the lowest Laplacian variance of the central luma among the first ``pool``."""
    import cv2
    files = sorted(folder.glob("*.jpg"))[:pool]
    scored = []
    for p in files:
        grey = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if grey is None:
            continue
        h, w = grey.shape
        centre = grey[h // 5: 4 * h // 5, w // 5: 4 * w // 5]
        scored.append((float(cv2.Laplacian(centre, cv2.CV_32F).var()), p.name, p))
    return [p for _, _, p in sorted(scored)[:faces]]


def load_upscaled(path: Path, upscale: int) -> torch.Tensor:
    """[1,H,W,3] float 0..1, enlarged with bicubic."""
    import cv2
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    h, w = bgr.shape[:2]
    big = cv2.resize(bgr, (w * upscale, h * upscale), interpolation=cv2.INTER_CUBIC)
    return torch.from_numpy(np.ascontiguousarray(big[..., ::-1])).float().div(255)[None]


def classical_photo(image: torch.Tensor) -> torch.Tensor:
    from .classical import classical_restore, load_params
    params = load_params()["heavy"]
    return classical_restore(image.permute(0, 3, 1, 2), params).permute(0, 2, 3, 1)


def restore_columns(images: list[torch.Tensor], restorers: list[str], notes: list) -> dict[str, list]:
    from ...core.pipeline import RestoreOptions, build_steps, restore_images
    columns: dict[str, list] = {"LQ (bicubic)": images, "classical": [classical_photo(x) for x in images]}
    for name in restorers:  # NAME@e0: exemplar detail off
        base, _, exemplar = name.partition("@e")
        options = RestoreOptions.from_values(restorer=base, device="cpu",
                                             **({"exemplar_detail": float(exemplar)} if exemplar else {}))
        steps = build_steps(options)
        outs = []
        for i, x in enumerate(images):
            result = restore_images(x, options, steps)
            if not result.masks.any():
                notes.append(f"{name}: no face found in row {i}; the input is shown")
            outs.append(result.images)
        columns[Path(base).stem + name[len(base):] if base.endswith(".safetensors") else name] = outs
    return columns


def write_grid(path: Path, columns: dict[str, list], tile: int) -> Path:
    import cv2
    rows = []
    for i in range(len(next(iter(columns.values())))):
        cells = [cv2.resize((col[i][0].clamp(0, 1).numpy() * 255).round().astype(np.uint8), (tile, tile),
                            interpolation=cv2.INTER_AREA) for col in columns.values()]
        rows.append(np.concatenate(cells, axis=1))
    grid = np.concatenate(rows, axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix or ".jpg", grid[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise ValueError(f"could not encode {path}")
    tmp = path.with_name(f".{path.name}.{np.random.default_rng().integers(1 << 30)}.tmp")
    try:
        tmp.write_bytes(buf.tobytes())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def run(out: str | Path, restorers: list[str], faces: int = 12, pool: int = 2000, upscale: int = 2,
        tile: int = 256, folder: Optional[str] = None) -> dict:
    from ..datasets import shared_data_dir
    root = Path(folder) if folder else shared_data_dir() / "utkface"
    picked = pick_blurriest(root, faces, pool)
    notes: list[str] = []
    images = [load_upscaled(p, upscale) for p in picked]
    columns = restore_columns(images, restorers, notes)
    path = write_grid(Path(out), columns, tile)
    record = {"faces": [p.name for p in picked], "columns": list(columns), "upscale": upscale, "pool": pool,
              "notes": notes}
    path.with_suffix(".json").write_text(json.dumps(record, indent=1))
    return record


def main(argv=None) -> None:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--restorers", default="facerefine-compact-v2")
    ap.add_argument("--faces", type=int, default=12)
    ap.add_argument("--pool", type=int, default=2000)
    ap.add_argument("--upscale", type=int, default=2)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--folder", help="a folder of face photos (default: ../shared/data/utkface)")
    ap.add_argument("--out", default="runs/real_lq_grid.jpg")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    print(json.dumps(run(args.out, [r for r in args.restorers.split(",") if r], args.faces, args.pool,
                         args.upscale, args.tile, args.folder)))


if __name__ == "__main__":
    main()
