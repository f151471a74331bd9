"""Finding the weights pyiqa metrics need, without letting pyiqa surprise-download.

pyiqa downloads each metric's checkpoint to ``<torch hub dir>/pyiqa`` (CLIP
backbones to ``<torch hub dir>/clip``) the first time it is built. We look for
those files in the "pyiqa" folder kind first (ComfyUI ``models/pyiqa``, A1111
``models/pyiqa``, ``$FACEREFINE_HOME/pyiqa``), then in pyiqa's own cache. Offline
(``FACEREFINE_OFFLINE=1``) a missing file raises WeightsNotFoundError naming the
file and the folders, before pyiqa is touched.
"""
from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Iterator, Optional

from ...errors import WeightsFormatError, WeightsNotFoundError
from ...models import locate

PYIQA_FOLDER = "pyiqa"
_HF_BASE = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/"
_CLIP_RN50 = ("https://openaipublic.azureedge.net/clip/models/"
              "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt")

# metric -> files pyiqa reads: (file, sub-folder of the torch hub dir, url)
PYIQA_FILES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "topiq_nr-face": (("topiq_nr_cgfiqa_res50-0a8b8e4f.pth", "pyiqa", _HF_BASE + "topiq_nr_cgfiqa_res50-0a8b8e4f.pth"),),
    "musiq": (("musiq_koniq_ckpt-e95806b9.pth", "pyiqa", _HF_BASE + "musiq_koniq_ckpt-e95806b9.pth"),),
    "clipiqa": (("RN50.pt", "clip", _CLIP_RN50),),
    "maniqa": (("ckpt_koniq10k.pt", "pyiqa", _HF_BASE + "ckpt_koniq10k.pt"),),
    "niqe": (("niqe_modelparameters.mat", "pyiqa", _HF_BASE + "niqe_modelparameters.mat"),),
    "brisque": (("brisque_svm_weights.pth", "pyiqa", _HF_BASE + "brisque_svm_weights.pth"),),
    "piqe": (),
}

# backbones that timm fetches from the Hugging Face cache, not from a file we can point at
PYIQA_HF_BACKBONES: dict[str, str] = {"maniqa": "timm/vit_base_patch8_224.augreg2_in21k_ft_in1k"}

_PATCH_LOCK = threading.RLock()


def prepare_offline_env() -> None:
    """With FACEREFINE_OFFLINE=1, make huggingface_hub/pyiqa fail fast instead of retrying the hub."""
    if locate.offline():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


def torch_hub_dir() -> Path:
    import torch.hub
    return Path(torch.hub.get_dir())


def candidate_folders() -> list[Path]:
    """Where pyiqa files are looked for, in order."""
    folders = [p for p in locate.search_folders(PYIQA_FOLDER) if p != locate.PACKAGE_WEIGHTS]
    hub = torch_hub_dir()
    for extra in (hub / "pyiqa", hub / "clip"):
        if extra not in folders:
            folders.append(extra)
    return folders


def find_file(file: str, sub: str) -> Optional[Path]:
    for folder in candidate_folders():
        for candidate in (folder / file, folder / sub / file):
            if candidate.is_file() and candidate.stat().st_size > 0:
                return candidate
    return None


def missing_files(metric: str) -> list[tuple[str, str, str]]:
    return [entry for entry in PYIQA_FILES.get(metric, ()) if find_file(entry[0], entry[1]) is None]


def weights_present(metric: str) -> bool:
    return metric in PYIQA_FILES and not missing_files(metric)


def require_files(metric: str) -> dict[str, Path]:
    """Paths of every file the metric needs; offline, a missing one raises WeightsNotFoundError."""
    found: dict[str, Path] = {}
    missing = []
    for file, sub, url in PYIQA_FILES.get(metric, ()):
        hit = find_file(file, sub)
        if hit is None:
            missing.append((file, sub, url))
        else:
            found[file] = hit
    if missing and locate.offline():
        folders = "\n  ".join(str(p) for p in candidate_folders())
        lines = "\n".join(f"  {file}  <- {url}" for file, _, url in missing)
        raise WeightsNotFoundError(
            f"metric '{metric}' needs weights that are not on this machine (FACEREFINE_OFFLINE=1, so nothing "
            f"was downloaded):\n{lines}\n Searched folders (pyiqa):\n  {folders}\n"
            f" Put the files in one of those folders (ComfyUI: models/pyiqa), or use the offline metrics "
            f"'face-niqe' or 'piqe'.")
    return found


@contextlib.contextmanager
def pyiqa_sources(found: dict[str, Path]) -> Iterator[None]:
    """Point pyiqa at the folders holding ``found`` and refuse pickled code while it builds a metric.

    pyiqa calls ``torch.load(weights_only=False)``; inside this block every torch.load is
    forced to ``weights_only=True`` so a checkpoint can only hold tensors and plain containers.
    """
    import torch
    import pyiqa.archs.clip_model as clip_model
    import pyiqa.utils.download_util as download_util

    with _PATCH_LOCK:
        saved_cache = download_util.DEFAULT_CACHE_DIR
        saved_get_dir = clip_model.get_dir
        saved_load = torch.load
        for path in found.values():
            if path.parent.name == "clip":
                hub_root = str(path.parent.parent)
                clip_model.get_dir = lambda root=hub_root: root
            else:
                download_util.DEFAULT_CACHE_DIR = str(path.parent)

        def safe_load(*args, **kwargs):
            kwargs["weights_only"] = True
            try:
                return saved_load(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - re-raised with a readable message
                if "weights_only" in str(err) or "Unsupported global" in str(err):
                    raise WeightsFormatError(
                        f"refused to load a pyiqa checkpoint that holds pickled Python objects beyond "
                        f"tensors ({str(err).splitlines()[0]})") from err
                raise

        torch.load = safe_load
        try:
            yield
        finally:
            torch.load = saved_load
            download_util.DEFAULT_CACHE_DIR = saved_cache
            clip_model.get_dir = saved_get_dir
