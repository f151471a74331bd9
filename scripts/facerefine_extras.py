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


def _device():
    """Settings -> FaceRefine device; 'auto' follows the webui's face-restoration device."""
    choice = _option("facerefine_device", "auto")
    if choice and choice != "auto":
        return choice
    try:
        from modules import devices
        device = getattr(devices, "device_codeformer", None) or getattr(devices, "device", None)
        return str(device) if device is not None else "auto"
    except Exception:
        return "auto"


def _number(value, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


class FaceRefinePostprocessing(scripts_postprocessing.ScriptPostprocessing):
    name = "FaceRefine"
    order = 3100  # after the webui's CodeFormer (3000)

    def ui(self):
        with _accordion("FaceRefine") as enable:
            with gr.Row():
                restorer = gr.Dropdown(service.restorer_choices(), label="Restorer", allow_custom_value=True,
                                       value=_option("facerefine_model", service.DEFAULT_RESTORER),
                                       elem_id="extras_facerefine_restorer")
                color_correction = gr.Dropdown(service.color_choices(), value=service.DEFAULT_COLOR,
                                               label="Colour correction", elem_id="extras_facerefine_color")
            with gr.Row():
                quality = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="Quality (IQPFR slider)",
                                    elem_id="extras_facerefine_quality")
                fidelity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Fidelity (0 = quality, 1 = faithful)",
                                     elem_id="extras_facerefine_fidelity")
                visibility = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="Visibility",
                                       elem_id="extras_facerefine_visibility")
            with gr.Row():
                refine_steps = gr.Slider(0, 50, value=0, step=1, label="Identity refine steps (0 = off)",
                                         elem_id="extras_facerefine_refine_steps")
                identity_strength = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Identity strength",
                                              elem_id="extras_facerefine_identity_strength")
        return {"enable": enable, "restorer": restorer, "quality": quality, "fidelity": fidelity,
                "refine_steps": refine_steps, "identity_strength": identity_strength,
                "visibility": visibility, "color_correction": color_correction}

    def process(self, pp, enable=False, restorer=None, quality=1.0, fidelity=0.5, refine_steps=0,
                identity_strength=0.5, visibility=1.0, color_correction=None):
        visibility = _number(visibility, 1.0)
        if not enable or visibility <= 0:
            return
        settings = service.Settings(  # the webui's API passes None for arguments it was not given
            restorer=restorer or _option("facerefine_model", service.DEFAULT_RESTORER),
            detector=_option("facerefine_detector", "auto"), device=_device(),
            quality=_number(quality, 1.0), fidelity=_number(fidelity, 0.5),
            refine_steps=int(_number(refine_steps, 0)), identity_strength=_number(identity_strength, 0.5),
            visibility=visibility, color_correction=color_correction or service.DEFAULT_COLOR)
        outcome = service.restore_pil(pp.image, settings)
        for message in outcome.messages:
            print(f"[FaceRefine] {message}", file=sys.stderr)
        if _option("facerefine_unload", False):
            service.unload()
        if outcome.ok:
            pp.image = outcome.pil_image
        pp.info.update(outcome.info)
