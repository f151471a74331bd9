"""Aligned-face training data: folders -> one uint8 cache -> random HQ batches.

Every face is brought to the FFHQ 5-point framing used by the crop step
(eyes at y = 0.469, inter-ocular distance 0.246 of the crop side), so a model
trained here sees faces framed exactly as at inference:

- ``ffhq``     already FFHQ-aligned crops (FFHQ, our own ``crop --out``): only resized.
- ``landmarks`` a ``NAME.landmarks.json`` sidecar (London set: 189 WebMorph points, 0/1 = pupils) gives a
               two-point similarity alignment. London smiling photos have no sidecar; they use the neutral
               photo's landmarks of the same person (same studio pose), see ``london_sidecar``.
- ``utkface``  UTKFace "aligned & cropped" chips are tighter than FFHQ. We measured the mean face of
               every 20th chip: pupils at (0.29, 0.28) and (0.69, 0.28) of the chip, mouth at y = 0.68, so
               a fixed similarity (scale 0.63) puts them on the template. The rest of the frame (forehead
               top, sides) is filled with a blurred edge replication.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from ...errors import FaceRefineError
from .. import datasets

# FFHQ eye centres in a unit square (facexlib template / 512)
FFHQ_EYES = np.array([[192.98138, 239.94708], [318.90277, 240.1936]]) / 512.0
UTKFACE_EYES = np.array([[0.29, 0.28], [0.69, 0.28]])
FRAMINGS = ("ffhq", "landmarks", "utkface", "auto")


def similarity_from_eyes(src_eyes: np.ndarray, size: int) -> np.ndarray:
    """2x3 similarity mapping the two source eye points onto the FFHQ template at ``size`` px."""
    dst = FFHQ_EYES * size
    s0, s1 = np.asarray(src_eyes, dtype=np.float64)
    d0, d1 = dst
    vs, vd = s1 - s0, d1 - d0
    scale = np.linalg.norm(vd) / max(np.linalg.norm(vs), 1e-6)
    angle = np.arctan2(vd[1], vd[0]) - np.arctan2(vs[1], vs[0])
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    t = (d0 + d1) / 2 - rot @ ((s0 + s1) / 2)
    return np.concatenate([rot, t[:, None]], axis=1).astype(np.float32)


def london_sidecar(path: Path) -> Optional[Path]:
    """Landmarks file for a London photo: its own, or the neutral one of the same identity; a 3DSK photo's own
    WebMorph template (``NAME.tem``, the same 189 points)."""
    own = path.with_name(path.stem + ".landmarks.json")
    if own.is_file():
        return own
    if path.with_suffix(".tem").is_file():
        return path.with_suffix(".tem")
    neutral_dir = path.parent.parent / "neutral"
    ident = datasets.london_identity(path)
    hits = sorted(neutral_dir.glob(f"{ident}_*.landmarks.json")) if neutral_dir.is_dir() else []
    return hits[0] if hits else None


def read_pupils(sidecar: Path) -> np.ndarray:
    """The two pupils (points 0 and 1) of a London ``.landmarks.json`` or a WebMorph ``.tem`` (a count line,
    then one "x y" line per point)."""
    if Path(sidecar).suffix == ".tem":
        lines = Path(sidecar).read_text().split("\n")
        return np.array([[float(v) for v in line.split()[:2]] for line in lines[1:3]], dtype=np.float64)
    pts = json.loads(Path(sidecar).read_text())["points"]
    return np.array(pts[:2], dtype=np.float64)


def _read_rgb(path: Path) -> np.ndarray:
    import cv2
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FaceRefineError(f"cannot read image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def align_face(path: str | os.PathLike, size: int, framing: str = "auto") -> np.ndarray:
    """One face as uint8 [size,size,3] in FFHQ framing (see module docstring)."""
    import cv2
    path = Path(path)
    img = _read_rgb(path)
    h, w = img.shape[:2]
    if framing == "auto":
        sidecar = london_sidecar(path)
        framing = "landmarks" if sidecar else ("utkface" if path.name.endswith(".chip.jpg") else "ffhq")
    if framing == "ffhq":
        return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    if framing == "landmarks":
        sidecar = london_sidecar(path)
        if sidecar is None:
            raise FaceRefineError(f"{path.name}: framing 'landmarks' needs {path.stem}.landmarks.json")
        matrix = similarity_from_eyes(read_pupils(sidecar), size)
    elif framing == "utkface":
        matrix = similarity_from_eyes(UTKFACE_EYES * np.array([w, h]), size)
    else:
        raise FaceRefineError(f"unknown framing {framing!r}; choose from {FRAMINGS}")
    # pre-shrink big images so the warp does not alias
    scale = float(np.hypot(*matrix[0, :2]))
    if scale < 0.5:
        f = 2 * scale
        img = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        matrix = matrix.copy()
        matrix[:, :2] /= f
    flags = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    out = cv2.warpAffine(img, matrix, (size, size), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    inside = cv2.warpAffine(np.ones((img.shape[0], img.shape[1]), np.float32), matrix, (size, size),
                            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if inside.min() < 0.999:
        # soften the replicated streaks outside the source image into a smooth background
        blurred = cv2.GaussianBlur(out, (0, 0), sigmaX=size / 12)
        inside = cv2.GaussianBlur(inside, (0, 0), sigmaX=size / 64)[..., None]
        out = (out * inside + blurred * (1 - inside)).round().clip(0, 255).astype(np.uint8)
    return out


def compact_sources(root: Optional[str] = None) -> list[Path]:
    """The compact model's training images: all UTKFace chips + London TRAIN identities (never held-out)."""
    data = Path(root) if root else datasets.shared_data_dir()
    split = datasets.london_split(data / "london")
    return datasets.list_images(data / "utkface") + split["train_neutral"] + split["train_smiling"]


def resolve_sources(spec: Sequence[str] | str, allow_heldout: bool = False) -> list[Path]:
    """Config ``data.sources``: folders, files, or the keyword "compact" (UTKFace + London train).

    Training refuses held-out London identities (``allow_heldout`` is for evaluation only).
    """
    out: list[Path] = []
    for item in ([spec] if isinstance(spec, str) else spec):
        if item == "compact":
            out += compact_sources()
        else:
            p = Path(item).expanduser()
            out += datasets.list_images(p) if p.is_dir() else ([p] if p.is_file() else [])
    if not out:
        raise FaceRefineError(f"no face images found in {spec!r}")
    if not allow_heldout:
        heldout = set(datasets.heldout_identities())
        leaked = [p for p in out if "london" in p.parts and datasets.london_identity(p) in heldout]
        if leaked:
            raise FaceRefineError(f"{len(leaked)} held-out London images in the training sources "
                                  f"(e.g. {leaked[0]}); they are kept for evaluation")
    return out


def build_cache(paths: Iterable[Path], size: int, cache_file: Path, framing: str = "auto",
                log=print) -> np.ndarray:
    """Align every face once into ``cache_file`` (uint8 [N,size,size,3] .npy); reuse it when the list matches."""
    paths = list(paths)
    cache_file = Path(cache_file)
    index_file = cache_file.with_suffix(".json")
    key = {"size": size, "framing": framing, "files": [str(p) for p in paths]}
    if cache_file.is_file() and index_file.is_file() and json.loads(index_file.read_text()) == key:
        return np.load(cache_file, mmap_mode="r")
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        arr[i] = align_face(p, size, framing)
        if log and (i + 1) % 2000 == 0:
            log(f"aligned {i + 1}/{len(paths)} faces")
    tmp = cache_file.with_name(cache_file.stem + ".part.npy")
    np.save(tmp, arr)
    os.replace(tmp, cache_file)
    index_file.write_text(json.dumps(key))
    return arr


class FaceBatches:
    """Seeded random HQ batches [B,3,S,S] float 0..1 from the uint8 cache, with horizontal flips."""

    def __init__(self, faces: np.ndarray, batch_size: int, seed: int = 0, flip: bool = True):
        if len(faces) == 0:
            raise FaceRefineError("the training set is empty")
        self.faces, self.batch_size, self.flip = faces, batch_size, flip
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.faces)

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch [B,3,S,S] float 0..1, indices into the cache)."""
        idx = torch.randint(len(self.faces), (self.batch_size,), generator=self.generator)
        batch = torch.from_numpy(np.stack([self.faces[i] for i in idx.tolist()])).permute(0, 3, 1, 2).float() / 255
        if self.flip:
            flip = torch.rand(self.batch_size, generator=self.generator) < 0.5
            batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)
        return batch.contiguous(), idx
