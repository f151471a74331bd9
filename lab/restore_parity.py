"""Compare two folders of ``restore`` outputs pixel by pixel and byte by byte (refactors must be bit-identical).

    python -m facerefine.lab.restore_parity BEFORE_DIR AFTER_DIR

Files are matched by name; ``<name>_restored.<ext>`` in AFTER_DIR matches ``<name>.<ext>`` in BEFORE_DIR.
Exit status 0 when every file is identical.
"""
from __future__ import annotations

import argparse
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m facerefine.lab.restore_parity", description=__doc__.splitlines()[0])
    p.add_argument("before")
    p.add_argument("after")
    args = p.parse_args(argv)
    rows = compare(Path(args.before), Path(args.after))
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
