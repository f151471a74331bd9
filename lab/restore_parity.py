"""Compare two folders of ``restore`` outputs pixel by pixel and byte by byte (refactors must be bit-identical).

    python -m facerefine.lab.restore_parity run OUT_DIR          # the scenarios below, through the CLI
    python -m facerefine.lab.restore_parity BEFORE_DIR AFTER_DIR

Files are matched by name; ``<name>_restored.<ext>`` in AFTER_DIR matches ``<name>.<ext>`` in BEFORE_DIR.
Exit status 0 when every file is identical.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def compare(before: Path, after: Path) -> list[dict]:
    rows = []
    for b in sorted(p for p in before.rglob("*") if p.is_file()):
        rel = b.relative_to(before)
        cands = [after / rel, after / rel.with_name(f"{b.stem}_restored{b.suffix}")]
        a = next((c for c in cands if c.is_file()), None)
        row = {"file": str(rel), "after": str(a) if a else None}
        if a is not None:
            pa, pb = np.asarray(Image.open(a)), np.asarray(Image.open(b))
            row["same_pixels"] = pa.shape == pb.shape and np.array_equal(pa, pb)
            row["same_bytes"] = a.read_bytes() == b.read_bytes()
            row["max_abs_diff"] = (int(np.abs(pa.astype(int) - pb.astype(int)).max()) if pa.shape == pb.shape
                                   else None)
        rows.append(row)
    return rows


LONDON = Path(__file__).resolve().parents[2] / "shared" / "data" / "london"
FACES = ("001_03", "002_03", "003_03")
# name -> CLI arguments; every path of the pipeline a refactor may touch
SCENARIOS = {
    "auto": [],
    "none": ["--restorer", "none"],
    "reference": ["--reference", str(LONDON / "smiling" / "001_08.jpg")],
    "quality0_fidelity025": ["--quality", "0", "--fidelity", "0.25"],
    "refine": ["--refine-steps", "3", "--seed", "0"],
    "refine_reference": ["--refine-steps", "3", "--seed", "0", "--identity-target", "reference",
                         "--reference", str(LONDON / "smiling" / "001_08.jpg")],
    "training_free": ["--lookup-mode", "training-free", "--quality", "0.8"],
}


def run_scenarios(out: Path) -> None:
    """Degraded London faces (x4 down, JPEG 40; deterministic) restored under every scenario into ``out``."""
    import cv2
    inputs = out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    for name in FACES:
        img = cv2.imread(str(LONDON / "neutral" / f"{name}.jpg"))
        h, w = img.shape[:2]
        small = cv2.resize(img, (w // 4, h // 4), interpolation=cv2.INTER_AREA)
        lq = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        ok, buf = cv2.imencode(".jpg", lq, [cv2.IMWRITE_JPEG_QUALITY, 40])
        (inputs / f"{name}.jpg").write_bytes(buf.tobytes())
    env = {**os.environ, "FACEREFINE_OFFLINE": "1"}
    for scenario, args in SCENARIOS.items():
        dest = out / scenario
        cmd = [sys.executable, "-m", "facerefine", "restore", *[str(inputs / f"{n}.jpg") for n in FACES],
               "-o", str(dest), *args]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{scenario}: {' '.join(cmd)}\n{done.stderr[-2000:]}")
        print(f"{scenario}: {len(list(dest.iterdir()))} files", flush=True)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["run"] and len(argv) == 2:
        run_scenarios(Path(argv[1]))
        return 0
    p = argparse.ArgumentParser(prog="python -m facerefine.lab.restore_parity", description=__doc__.splitlines()[0])
    p.add_argument("before")
    p.add_argument("after")
    args = p.parse_args(argv)
    before, after = Path(args.before), Path(args.after)
    rows = [r for r in compare(before, after) if not r["file"].startswith("inputs")]
    ok = bool(rows)
    for r in rows:
        same = r.get("same_pixels") and r.get("same_bytes")
        ok &= bool(same)
        print(f"{r['file']}: " + ("missing in AFTER" if r["after"] is None else
                                  f"pixels identical={r['same_pixels']} bytes identical={r['same_bytes']} "
                                  f"max|diff|={r['max_abs_diff']}"))
    print("BIT-IDENTICAL" if ok else "DIFFERENT")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
