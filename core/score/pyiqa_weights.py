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


# metric -> the pyiqa option that takes a local checkpoint path (pyiqa then reads exactly that file)
PATH_OPTION: dict[str, str] = {"topiq_nr-face": "pretrained_model_path", "musiq": "pretrained_model_path",
                               "niqe": "pretrained_model_path", "brisque": "pretrained_model_path"}


def verify_checkpoints(found: dict[str, Path]) -> None:
    """Refuse, before pyiqa reads them, checkpoints that hold pickled code.

    pyiqa reads checkpoints with ``torch.load(weights_only=False)``. Each pickle is first read here with
    ``weights_only=True`` (only tensors and plain containers); a file that passes holds no code for pyiqa's
    own load to run. TorchScript archives (CLIP's RN50.pt, read by torch.jit.load) and .mat files hold no
    pickled Python code and are left to pyiqa."""
    import torch
    from ...models.loading import pickle_errors
    for path in found.values():
        if path.suffix.lower() not in (".pth", ".pt", ".ckpt", ".bin") or _is_torchscript(path):
            continue
        try:
            torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle_errors() as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            if "weights_only" in str(err) or "Unsupported global" in str(err) or "GLOBAL" in str(err):
                raise WeightsFormatError(
                    f"refused the pyiqa checkpoint {path}: it holds pickled Python objects beyond tensors, "
                    f"which could run code ({first})") from err
            raise WeightsFormatError(f"{path} is not a readable PyTorch checkpoint ({first}); it may be "
                                     f"truncated - delete it and download it again") from err


def _is_torchscript(path: Path) -> bool:
    import zipfile
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist()[:200])
    except (zipfile.BadZipFile, OSError):
        return False


@contextlib.contextmanager
def pyiqa_sources(found: dict[str, Path], metric: Optional[str] = None) -> Iterator[dict]:
    """Check the checkpoints, then yield the keyword arguments that point pyiqa at them.

    No global is patched for metrics whose pyiqa class takes a checkpoint path (PATH_OPTION): torch.load
    stays untouched for every thread. Only metrics without such an option (CLIP backbones, MANIQA) get
    pyiqa's own cache folder pointed at our folder while they are built, under a lock."""
    verify_checkpoints(found)
    option = PATH_OPTION.get(metric or "")
    entries = [entry for entry in PYIQA_FILES.get(metric or "", ()) if entry[0] in found]
    if option and len(entries) == 1:
        yield {option: str(found[entries[0][0]])}
        return
    import pyiqa.archs.clip_model as clip_model
    import pyiqa.utils.download_util as download_util
    with _PATCH_LOCK:
        saved_cache = download_util.DEFAULT_CACHE_DIR
        saved_get_dir = clip_model.get_dir
        for path in found.values():
            if path.parent.name == "clip":
                hub_root = str(path.parent.parent)
                clip_model.get_dir = lambda root=hub_root: root
            else:
                download_util.DEFAULT_CACHE_DIR = str(path.parent)
        try:
            yield {}
        finally:
            download_util.DEFAULT_CACHE_DIR = saved_cache
            clip_model.get_dir = saved_get_dir
