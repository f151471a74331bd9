"""Model dropdowns of the nodes: ComfyUI model folders registered, weights files listed, a dropdown entry
resolved to a file (ComfyUI's own index, then models.locate, the one weights locator)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .host import folder_paths

MODEL_FOLDERS = ("facerestore_models", "facerefine", "facedetection", "pyiqa")
WEIGHT_EXTENSIONS = {".safetensors", ".pth", ".pt", ".ckpt", ".bin"}


def register_model_folders() -> None:
    """Register our model folders with ComfyUI's folder_paths (no-op outside ComfyUI)."""
    fp = folder_paths()
    if fp is None:
        return
    for name in MODEL_FOLDERS:
        default = os.path.join(fp.models_dir, name)
        fp.add_model_folder_path(name, default)
        paths, exts = fp.folder_names_and_paths[name]
        if not exts:  # registered by a yaml or by us: restrict to weights files
            fp.folder_names_and_paths[name] = (paths, set(WEIGHT_EXTENSIONS))
        elif isinstance(exts, set):
            exts.update(WEIGHT_EXTENSIONS)


def list_weights(folder: str) -> list[str]:
    """Weights files for a dropdown: ComfyUI's folder listing plus models.locate's search folders
    ($FACEREFINE_HOME, A1111). Files embedded in the package show only under their own kind."""
    from ..models.locate import PACKAGE_WEIGHTS, WEIGHT_SUFFIXES, search_folders
    from ..models.registry import REGISTRY
    fp = folder_paths()
    names: list[str] = []
    if fp is not None:
        try:
            names = list(fp.get_filename_list(folder))
        except Exception:  # noqa: BLE001 - folder kind not registered
            names = []
    kind = {s.file: s.folder for s in REGISTRY.values()}
    for d in search_folders(folder):
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if f.suffix.lower() not in WEIGHT_SUFFIXES or f.name in names:
                continue
            if d == PACKAGE_WEIGHTS and kind.get(f.name) != folder:
                continue
            names.append(f.name)
    return names


def list_weights_for(folder: str, architecture: str) -> list[str]:
    """list_weights without registry files of another architecture (e.g. no metric in a prior dropdown)."""
    from ..models.registry import REGISTRY
    arch = {s.file: s.architecture for s in REGISTRY.values()}
    return [n for n in list_weights(folder) if arch.get(Path(n).name, architecture) == architecture]


def weights_choices(folder: str, extra: Sequence[str] = ()) -> list[str]:
    """Dropdown entries: ``extra`` first, files present, then known registry files not present yet.

    Known-but-absent entries download on first use, or (offline) fail with an error that
    names the file, the folders searched and the URL.
    """
    from ..models.registry import specs_for_folder
    names = list(extra)
    for name in list_weights(folder) + [s.file for s in specs_for_folder(folder) if not s.embedded]:
        if name not in names:
            names.append(name)
    return names


def embedded_restorers() -> list[str]:
    """Restorers shipped inside the package (weights/), e.g. the compact IQPFR default."""
    from ..models.locate import PACKAGE_WEIGHTS
    from ..models.registry import REGISTRY
    return [s.file for s in REGISTRY.values()
            if s.embedded and s.needed_by.startswith("lookup") and (PACKAGE_WEIGHTS / s.file).is_file()]


def restorer_choices(extra: Sequence[str] = ()) -> list[str]:
    """Restorer dropdown: models/facerestore_models files, the embedded default, known downloads."""
    register_model_folders()
    return weights_choices("facerestore_models", extra=list(extra) + embedded_restorers())


def default_restorer() -> str:
    """What ``auto`` restorer means in every front end (models.locate.default_restorer: a community restorer
    on disk, else the embedded compact model), as a dropdown entry (its file name)."""
    from ..models.locate import default_restorer as auto
    from ..models.registry import get_spec
    name = auto()
    spec = get_spec(name)
    return spec.file if spec is not None else name


def weights_path(name: str, folder: str) -> Path:
    """Full path of a dropdown entry (or registry name / path); errors name file and folders."""
    fp = folder_paths()
    if fp is not None:
        try:
            hit = fp.get_full_path(folder, name)
        except Exception:  # noqa: BLE001
            hit = None
        if hit:
            return Path(hit)
    from ..models.locate import resolve
    return resolve(name, folder)
