"""AUTOMATIC1111 / Forge Extras tab: FaceRefine restoration of the faces in the picture.

Loaded by path like every webui script; see facerefine_restorer.py for why the extension folder is
imported as a package first.
"""
import importlib.util
import sys
from pathlib import Path

import gradio as gr
import numpy as np
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
devices = importlib.import_module(f"{load_facerefine().__name__}.models.device")    # what 'auto' device means


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
    """Settings -> FaceRefine device; 'auto' follows the webui's face-restoration device (models.device)."""
    return devices.resolve_device(_option("facerefine_device", "auto"))


def _slider(name: str, label: str, elem_id: str):
    """A slider whose range, step, default and help are the control's row in core/controls.py."""
    kw = controls.gradio_kwargs(name)
    return gr.Slider(kw["minimum"], kw["maximum"], value=kw["value"], step=kw["step"], label=label,
                     info=kw["info"], elem_id=elem_id)


def _default(name: str):
    return controls.BY_NAME[name].default


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
                quality = _slider("quality", "Quality (IQPFR slider)", "extras_facerefine_quality")
                fidelity = _slider("fidelity", "Fidelity (0 = quality, 1 = faithful)", "extras_facerefine_fidelity")
                visibility = _slider("visibility", "Visibility", "extras_facerefine_visibility")
            with gr.Row():
                refine_steps = _slider("refine_steps", "Identity refine steps (0 = off)",
                                       "extras_facerefine_refine_steps")
                identity_strength = _slider("identity_strength", "Identity strength",
                                            "extras_facerefine_identity_strength")
            reference = gr.Image(label=controls.BY_NAME["reference"].title + " (optional: the same person, "
                                 "lends identity and fine detail)", type="numpy",
                                 elem_id="extras_facerefine_reference")
        return {"enable": enable, "restorer": restorer, "quality": quality, "fidelity": fidelity,
                "refine_steps": refine_steps, "identity_strength": identity_strength,
                "visibility": visibility, "color_correction": color_correction, "reference": reference}

    def process(self, pp, enable=False, restorer=None, quality=None, fidelity=None, refine_steps=None,
                identity_strength=None, visibility=None, color_correction=None, reference=None):
        visibility = _number(visibility, _default("visibility"))
        if not enable or visibility <= 0:
            return
        settings = service.Settings(  # the webui's API passes None for arguments it was not given
            restorer=restorer or _option("facerefine_model", service.DEFAULT_RESTORER),
            detector=_option("facerefine_detector", _default("detector")), device=_device(),
            quality=_number(quality, _default("quality")), fidelity=_number(fidelity, _default("fidelity")),
            refine_steps=int(_number(refine_steps, _default("refine_steps"))),
            identity_strength=_number(identity_strength, _default("identity_strength")),
            visibility=visibility, color_correction=color_correction or service.DEFAULT_COLOR,
            reference=reference if isinstance(reference, np.ndarray) and reference.size else None)
        outcome = service.restore_pil(pp.image, settings)
        for message in outcome.messages:
            print(f"[FaceRefine] {message}", file=sys.stderr)
        if _option("facerefine_unload", False):
            service.unload()
        if outcome.ok:
            pp.image = outcome.pil_image
        pp.info.update(outcome.info)
