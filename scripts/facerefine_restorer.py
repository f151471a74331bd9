"""AUTOMATIC1111 / Forge: "FaceRefine" in Settings -> Face restoration, plus its settings.

The webui loads this file by path (not as part of a package), so the extension folder itself is
imported as the package ``facerefine`` first; after that only the package's public API is used.
"""
import importlib.util
import sys
from pathlib import Path

from modules import face_restoration, script_callbacks, shared

EXTENSION_ROOT = Path(__file__).resolve().parent.parent


def load_facerefine():
    """The FaceRefine package from this extension folder (imported once, shared by both scripts)."""
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

SECTION = ("facerefine", "FaceRefine")


def option(key, default=None):
    return getattr(shared.opts, key, default) if hasattr(shared, "opts") else default


def settings_from_opts(**overrides) -> "service.Settings":
    """Restore settings chosen in Settings -> FaceRefine (overridden by the Extras tab)."""
    values = dict(restorer=option("facerefine_model", service.DEFAULT_RESTORER),
                  device=_device(option("facerefine_device", "auto")),
                  quality=option("facerefine_quality", 1.0),
                  fidelity=option("facerefine_fidelity", 0.5),
                  refine_steps=option("facerefine_refine_steps", 0),
                  identity_strength=option("facerefine_identity_strength", 0.5),
                  id_model=option("facerefine_id_model", "auto"),
                  detector=option("facerefine_detector", "auto"),
                  color_correction=option("facerefine_color_correction", service.DEFAULT_COLOR))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return service.Settings(**values)


def _device(choice: str) -> str:
    """'auto' follows the webui's device for face restorers."""
    if choice and choice != "auto":
        return choice
    try:
        from modules import devices
        device = getattr(devices, "device_codeformer", None) or getattr(devices, "device", None)
        if device is not None:
            return str(device)
    except Exception:
        pass
    return "auto"


def report(message: str) -> None:
    print(f"[FaceRefine] {message}", file=sys.stderr)


class FaceRefineRestoration(face_restoration.FaceRestoration):
    """Used by txt2img/img2img "Restore faces" when selected in Settings."""

    def name(self):
        return "FaceRefine"

    def restore(self, np_image, w=None, **_):
        """RGB uint8 [H,W,3] in, same shape and dtype out. Errors are reported, never raised."""
        try:
            outcome = service.restore_array(np_image, settings_from_opts(fidelity=w))
        except Exception as err:  # settings of the wrong type etc.: generation goes on unrestored
            report(f"not restored: {err}")
            return np_image
        for message in outcome.messages:
            report(message)
        if option("facerefine_unload", False):
            service.unload()
        return outcome.image if outcome.ok else np_image


def on_ui_settings():
    import gradio as gr
    add = shared.opts.add_option
    info = shared.OptionInfo
    add("facerefine_model", info(service.DEFAULT_RESTORER, "FaceRefine restorer (registry name, file or path)",
                                 gr.Dropdown, lambda: {"choices": service.restorer_choices(),
                                                       "allow_custom_value": True}, section=SECTION))
    add("facerefine_device", info("auto", "FaceRefine device", gr.Radio,
                                  {"choices": ["auto", "cuda", "cpu"]}, section=SECTION))
    add("facerefine_unload", info(False, "Unload FaceRefine models after each use (saves VRAM, slower)",
                                  section=SECTION))
    add("facerefine_detector", info("auto", "FaceRefine face detector", gr.Dropdown,
                                    lambda: {"choices": service.detector_choices()}, section=SECTION))
    add("facerefine_quality", info(1.0, "FaceRefine quality (Restore faces)", gr.Slider,
                                   {"minimum": 0.0, "maximum": 1.0, "step": 0.05}, section=SECTION))
    add("facerefine_fidelity", info(0.5, "FaceRefine fidelity (0 = quality, 1 = faithful; CodeFormer family)",
                                    gr.Slider, {"minimum": 0.0, "maximum": 1.0, "step": 0.05}, section=SECTION))
    add("facerefine_refine_steps", info(0, "FaceRefine identity refine steps (0 = off)", gr.Slider,
                                        {"minimum": 0, "maximum": 50, "step": 1}, section=SECTION))
    add("facerefine_identity_strength", info(0.5, "FaceRefine identity strength", gr.Slider,
                                             {"minimum": 0.0, "maximum": 1.0, "step": 0.05}, section=SECTION))
    add("facerefine_id_model", info("auto", "FaceRefine identity network for refine (auto = ArcFace if present, "
                                            "else dlib's embedded ResNet, CC0, no download)", gr.Radio,
                                    {"choices": ["auto", "arcface", "dlib"]}, section=SECTION))
    add("facerefine_color_correction", info(service.DEFAULT_COLOR, "FaceRefine colour correction", gr.Dropdown,
                                            lambda: {"choices": service.color_choices()}, section=SECTION))


def register():
    """Add the restorer once (the webui may reload scripts)."""
    restorers = shared.face_restorers
    restorers[:] = [r for r in restorers if getattr(r, "name", lambda: None)() != "FaceRefine"]
    restorers.append(FaceRefineRestoration())


register()
script_callbacks.on_ui_settings(on_ui_settings)
