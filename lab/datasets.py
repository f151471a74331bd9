"""Face folders used for fitting, training and evaluation.

The London set split is fixed here once: every 5th identity (sorted by id) is
held out for evaluation and is never used to fit or train anything.
"""
from __future__ import annotations

import os
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def shared_data_dir() -> Path:
    env = os.environ.get("FACEREFINE_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def list_images(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []


def london_identity(path: Path) -> str:
    return Path(path).name.split("_")[0]


def london_split(root: str | os.PathLike | None = None) -> dict[str, list[Path]]:
    """{'train_neutral', 'train_smiling', 'heldout_neutral', 'heldout_smiling'} image lists."""
    root = Path(root) if root else shared_data_dir() / "london"
    neutral, smiling = list_images(root / "neutral"), list_images(root / "smiling")
    ids = sorted({london_identity(p) for p in neutral + smiling})
    heldout = set(ids[4::5])
    return {
        "train_neutral": [p for p in neutral if london_identity(p) not in heldout],
        "train_smiling": [p for p in smiling if london_identity(p) not in heldout],
        "heldout_neutral": [p for p in neutral if london_identity(p) in heldout],
        "heldout_smiling": [p for p in smiling if london_identity(p) in heldout],
    }


def heldout_identities(root: str | os.PathLike | None = None) -> list[str]:
    split = london_split(root)
    return sorted({london_identity(p) for p in split["heldout_neutral"]})
