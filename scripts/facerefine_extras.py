"""AUTOMATIC1111 / Forge Extras tab: FaceRefine restoration of the faces in the picture.

Loaded by path like every webui script; see facerefine_restorer.py for why the extension folder is
imported as a package first.
"""
import importlib.util
import sys
from pathlib import Path

import gradio as gr
from modules import scripts_postprocessing

EXTENSION_ROOT = Path(__file__).resolve().parent.parent


def load_facerefine():
    """The FaceRefine package from this extension folder (same logic as facerefine_restorer.py)."""
    for name in ("facerefine", "facerefine_webui_extension"):
        module = sys.modules.get(name)
        if module is not None and Path(getattr(module, "__file__", "") or "").resolve().parent == EXTENSION_ROOT:
            return module
    name = "facerefine" if "facerefine" not in sys.modules else "facerefine_webui_extension"
    spec = importlib.util.spec_from_file_location(name, EXTENSION_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(EXTENSION_ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


service = importlib.import_module(f"{load_facerefine().__name__}.ui.service")
controls = importlib.import_module(f"{load_facerefine().__name__}.core.controls")  # defaults, ranges, help
widgets = importlib.import_module(f"{load_facerefine().__name__}.ui.widgets")      # the controls as widgets


def _accordion(label):
    """The webui's InputAccordion (a collapsible enable toggle); a checkbox on webuis without it."""
    try:
        from modules.ui_components import InputAccordion
        return InputAccordion(False, label=label, elem_id="extras_facerefine")
    except ImportError:
        return _CheckboxGroup(label)


class _CheckboxGroup:
    def __init__(self, label):
        self.label = label

    def __enter__(self):
        self.group = gr.Group()
        self.group.__enter__()
        return gr.Checkbox(False, label=f"Enable {self.label}", elem_id="extras_facerefine_enable")

    def __exit__(self, *exc):
        return self.group.__exit__(*exc)


def _option(key, default):
    try:
        from modules import shared
        return getattr(shared.opts, key, default)
    except Exception:
        return default


class FaceRefinePostprocessing(scripts_postprocessing.ScriptPostprocessing):
    name = "FaceRefine"
    order = 3100  # after the webui's CodeFormer (3000)

    def ui(self):
        """The table's controls offered in the Extras tab (core/controls.py), under an enable toggle."""
        overrides = {"restorer": {"choices": service.restorer_choices(), "allow_custom_value": True,
                                  "value": _option("facerefine_model", service.DEFAULT_RESTORER)},
                     "reference": {"type": "numpy"}}
        with _accordion("FaceRefine") as enable:
            inputs = widgets.control_panel(gr, [c.name for c in controls.shown_in("extras")],
                                           lambda name: f"extras_facerefine_{name}", overrides, sliders_per_row=3)
        return {"enable": enable, **inputs}

    def process(self, pp, enable=False, **values):
        """The Extras values over Settings -> FaceRefine: a value the webui's API leaves out (None) is the setting's."""
        settings = service.settings_from_webui(_option, **values)
        if not enable or settings.visibility <= 0:
            return
        outcome = service.restore_pil(pp.image, settings)
        for message in outcome.messages:
            print(f"[FaceRefine] {message}", file=sys.stderr)
        if _option("facerefine_unload", False):
            service.unload()
        if outcome.ok:
            pp.image = outcome.pil_image
        pp.info.update(outcome.info)
