"""Build weights/exemplars.safetensors: the exemplar faces of exemplar detail (core/detail/exemplars.py).

No photo of the data set is stored. Every exemplar is a **composite of GROUP_SIZE different people** (the k-Same
de-identification of Newton, Sweeney & Malin 2005): London Face Set *training* photos (neutral and smiling; the
held-out identities of lab/datasets.london_split never take part) are aligned by the crop step (embedded MTCNN,
512²) and grouped by likeness (nearest descriptors, distinct identities); within a group every member is
registered by dense optical flow onto the group's mean and averaged, twice, so eyelids, irises, nostrils and lip
lines line up and stay sharp while each person's own features average out; the composite's detail band (finer
than σ 4 px) is then raised to its members' mean energy, which averaging lowers. The composite's face window is stored
as a JPEG (quality 92) with its descriptor. Run: ``python -m facerefine.lab.build_exemplars``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ..core.detail.exemplars import WINDOW, ExemplarSet, descriptor
from ..core.detail.transfer import detail_band, face_box, match_colours, new_flow, register_window
from ..models.loading import save_safetensors
from . import datasets
from .eval.face_metrics import crop_landmarks
from .eval.heldout import align_photos

JPEG_QUALITY = 92
GROUP_SIZE = 8          # people per composite
ROUNDS = 2              # register onto the mean, average; again onto the new mean
MAX_BAND_GAIN = 2.5     # at most this gain on the composite's detail band
SEED = 0
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "weights" / "exemplars.safetensors"
ATTRIBUTION = ("Composites of DeBruine, L., & Jones, B. (2017). Face Research Lab London Set (Version 5). "
               "figshare. doi:10.6084/m9.figshare.5047666.v5 (CC BY 4.0).")


def likeness_groups(descs: np.ndarray, identities: list[str], k: int = GROUP_SIZE, seed: int = SEED) -> list[list[int]]:
    """k-Same grouping: a random unassigned face and its k-1 nearest unassigned faces of other people form a
    group; faces left over join the nearest group that lacks their person. Every group has >= k people."""
    n = len(descs)
    dist = ((descs[:, None] - descs[None]) ** 2).sum(-1)
    free = set(range(n))
    groups: list[list[int]] = []
    leftovers = []
    for i in np.random.default_rng(seed).permutation(n):
        if i not in free:
            continue
        group, people = [int(i)], {identities[i]}
        for j in np.argsort(dist[i]):
            if j in free and j != i and identities[j] not in people:
                group.append(int(j))
                people.add(identities[j])
                if len(group) == k:
                    break
        free -= set(group)
        (groups if len(group) == k else leftovers).append(group)
    for j in (j for g in leftovers for j in g):
        options = [g for g in groups if identities[j] not in {identities[m] for m in g}]
        min(options, key=lambda g: dist[j, g].mean()).append(j)
    return groups


def composite(windows: list[np.ndarray], box, rounds: int = ROUNDS) -> np.ndarray:
    """Flow-registered mean of face windows [h,w,3] (box: the face box inside the window, for colour matching),
    its detail band raised to the members' mean band energy in the box (averaging lowers it)."""
    flow = new_flow()
    mean = np.mean(windows, axis=0).astype(np.float32)
    for _ in range(rounds):
        warped = [register_window(mean, match_colours(w, mean, box), flow=flow)[0] for w in windows]
        mean = np.mean(warped, axis=0).astype(np.float32)
    x0, y0, x1, y1 = box
    band = detail_band(mean, crop_side=512)
    energy = lambda b: float((b[y0:y1, x0:x1] ** 2).mean())  # noqa: E731
    gain = min(np.sqrt(np.mean([energy(detail_band(w, crop_side=512)) for w in warped]) / max(energy(band), 1e-12)),
               MAX_BAND_GAIN)
    return (mean + (gain - 1.0) * band).clip(0, 1)


def build(out: Path = DEFAULT_OUT, root=None, log=print) -> Path:
    import cv2
    split = datasets.london_split(root)
    paths = split["train_neutral"] + split["train_smiling"]
    heldout = set(datasets.heldout_identities(root))
    assert not heldout & {datasets.london_identity(p) for p in paths}
    log(f"aligning {len(paths)} London training photos")
    crops, faces, kept = align_photos(paths, 512, "mtcnn")
    imgs = [np.ascontiguousarray(c.permute(1, 2, 0).numpy(), dtype=np.float32) for c in crops]
    lms = [crop_landmarks(f) / 512.0 for f in faces]
    identities = [datasets.london_identity(p) for p in kept]
    groups = likeness_groups(np.stack([descriptor(im, lm) for im, lm in zip(imgs, lms)]), identities)
    log(f"{len(groups)} composites of {min(map(len, groups))}-{max(map(len, groups))} people")
    x0, y0, x1, y1 = WINDOW
    mean_lm = np.mean(lms, axis=0)
    bx0, by0, bx1, by1 = face_box(mean_lm, 512)
    box = (bx0 - x0, by0 - y0, bx1 - x0, by1 - y0)
    blobs, offsets, descs = [], [0], []
    for g in groups:
        mean = composite([imgs[i][y0:y1, x0:x1] for i in g], box)
        canvas = np.zeros((512, 512, 3), np.float32)
        canvas[y0:y1, x0:x1] = mean
        descs.append(descriptor(canvas, mean_lm))
        u8 = cv2.cvtColor((mean * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR)
        ok, jpg = cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        assert ok
        blobs.append(jpg.ravel())
        offsets.append(offsets[-1] + jpg.size)
    exemplars = ExemplarSet(np.concatenate(blobs), np.array(offsets, np.int64), np.stack(descs))
    meta = {"format": "facerefine-exemplars-1", "window": ",".join(map(str, WINDOW)), "count": len(groups),
            "people_per_exemplar": min(map(len, groups)), "identities": len(set(identities)),
            "groups": ";".join("+".join(kept[i].name for i in g) for g in groups),
            "license": "CC BY 4.0", "attribution": ATTRIBUTION}
    save_safetensors(exemplars.state_dict(), out, meta)
    log(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {len(groups)} composites)")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    build(Path(args.out))


if __name__ == "__main__":
    main()
