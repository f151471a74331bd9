"""ComfyUI adapters. Each module exposes NODES = {class_name: (NodeClass, "Display name")}."""
from __future__ import annotations

import importlib
import logging

_MODULES = ("crop_nodes", "score_nodes", "lookup_nodes", "refine_nodes", "paste_nodes", "all_in_one_nodes",
            "loader_nodes", "video_nodes")

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

for _name in _MODULES:
    try:
        _mod = importlib.import_module(f".{_name}", __name__)
    except Exception as _err:  # noqa: BLE001 - ComfyUI keeps running; the log names what is missing
        _missing = getattr(_err, "name", None) if isinstance(_err, ModuleNotFoundError) else None
        logging.getLogger("facerefine").exception(
            "FaceRefine: could not load the %s nodes%s", _name,
            f" (the Python package '{_missing}' is not installed)" if _missing else "")
        continue
    for _cls_name, (_cls, _display) in _mod.NODES.items():
        NODE_CLASS_MAPPINGS[_cls_name] = _cls
        NODE_DISPLAY_NAME_MAPPINGS[_cls_name] = _display
