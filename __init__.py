"""FaceRefine: blind face restoration (IQPFR quality prior + CLR-Face identity refine).

This file is the ComfyUI entry point. Importing it is cheap: the node classes
(and torch) load only when ComfyUI asks for NODE_CLASS_MAPPINGS.
"""
__version__ = "0.1.0"

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]


def __getattr__(name):
    if name in ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"):
        from . import nodes
        return getattr(nodes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
