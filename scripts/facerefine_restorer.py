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
controls = importlib.import_module(f"{load_facerefine().__name__}.core.controls")  # defaults, ranges, help

SECTION = ("facerefine", "FaceRefine")


def option(key, default=None):
    return getattr(shared.opts, key, default) if hasattr(shared, "opts") else default


def settings_from_opts(**overrides) -> "service.Settings":
    """Restore settings chosen in Settings -> FaceRefine (overridden by the values given, None = the option)."""
    return service.settings_from_webui(option, **overrides)


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


def restorer_dropdown_args() -> dict:
    """The restorer list (re-read whenever the webui refreshes the setting). Typed values (a path) are allowed
    where the webui's gradio can update that flag: gradio 3.41's Dropdown.update() (AUTOMATIC1111 1.10) has no
    allow_custom_value and fails the whole settings refresh when it is given."""
    import inspect

    import gradio as gr
    args = {"choices": service.restorer_choices()}
    update = getattr(gr.Dropdown, "update", None)
    if update is None or "allow_custom_value" in inspect.signature(update).parameters:
        args["allow_custom_value"] = True
    return args


def on_ui_settings():
    import gradio as gr
    add = shared.opts.add_option
    info = shared.OptionInfo
    add("facerefine_model", info(service.DEFAULT_RESTORER, "FaceRefine restorer (registry name, file or path)",
                                 gr.Dropdown, restorer_dropdown_args, section=SECTION))
    add("facerefine_device", info("auto", "FaceRefine device", gr.Radio,
                                  {"choices": ["auto", "cuda", "cpu"]}, section=SECTION))
    add("facerefine_unload", info(False, "Unload FaceRefine models after each use (saves VRAM, slower)",
                                  section=SECTION))
    for c in controls.shown_in("webui"):  # one option per control: default, range or choices, help
        default, label, args = controls.a1111_option(c.name)
        component = (gr.Slider if "minimum" in args else gr.Dropdown if "choices" in args
                     else None if c.kind == "bool" else gr.Textbox)  # None: the webui's checkbox
        opt = info(default, label, component, args, section=SECTION)
        if callable(getattr(opt, "info", None)):  # webui >= 1.6: help text under the setting
            opt = opt.info(c.help)
        add(f"facerefine_{c.name}", opt)


def on_app_started(_demo, app):
    """POST /facerefine/v1/restore: base64 image + any control -> base64 PNG + per-face info (docs/a1111.md).
    The webui's /sdapi/v1/extra-single-image forwards no arguments to extension sections, hence this route."""
    from fastapi import Body
    from fastapi.responses import JSONResponse

    @app.post("/facerefine/v1/restore", tags=["FaceRefine"])
    def facerefine_restore(payload: dict = Body(...)):
        status, answer = service.restore_request(payload, defaults=settings_from_opts())
        if option("facerefine_unload", False):
            service.unload()
        return JSONResponse(answer, status_code=status)


def register():
    """Add the restorer once (the webui may reload scripts)."""
    restorers = shared.face_restorers
    restorers[:] = [r for r in restorers if getattr(r, "name", lambda: None)() != "FaceRefine"]
    restorers.append(FaceRefineRestoration())


register()
script_callbacks.on_ui_settings(on_ui_settings)
script_callbacks.on_app_started(on_app_started)
