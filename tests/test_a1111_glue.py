"""A1111/Forge glue (scripts/*.py) against small stubs of the webui's `modules.*`.

The stubs follow the webui's own code: FaceRestoration / restore_faces (modules/face_restoration.py),
PostprocessedImage / ScriptPostprocessing (modules/scripts_postprocessing.py), shared.opts/OptionInfo,
script_callbacks.on_ui_settings, paths.models_path, and the loader (script_loading.load_module).
"""
import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


# ---------------------------------------------------------------- webui stubs

class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None,
                 section=None, refresh=None, **kwargs):
        self.default, self.label, self.component = default, label, component
        self.component_args, self.section = component_args, section


class Options:
    def __init__(self):
        self.data_labels = {}
        self.face_restoration_model = "FaceRefine"

    def add_option(self, key, info):
        self.data_labels[key] = info
        if not hasattr(self, key):
            setattr(self, key, info.default)


def build_webui(models_path: Path, with_accordion: bool = True) -> dict:
    """Fresh `modules.*` stub modules (returned for sys.modules)."""
    mods = {}

    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        mods[name] = m
        return m

    pkg = module("modules", __path__=[])
    shared = module("modules.shared", face_restorers=[], opts=Options(), OptionInfo=OptionInfo)

    class FaceRestoration:
        def name(self):
            return "None"

        def restore(self, np_image):
            return np_image

    def restore_faces(np_image):  # as in modules/face_restoration.py
        chosen = [x for x in shared.face_restorers if x.name() == shared.opts.face_restoration_model]
        return chosen[0].restore(np_image) if chosen else np_image

    module("modules.face_restoration", FaceRestoration=FaceRestoration, restore_faces=restore_faces)

    class PostprocessedImage:
        def __init__(self, image):
            self.image = image
            self.info = {}

    class ScriptPostprocessing:
        filename = None
        controls = None
        order = 1000
        name = None

        def ui(self):
            pass

        def process(self, pp, **args):
            pass

    module("modules.scripts_postprocessing", PostprocessedImage=PostprocessedImage,
           ScriptPostprocessing=ScriptPostprocessing)
    callbacks = []
    app_started = []
    module("modules.script_callbacks", on_ui_settings=callbacks.append, registered=callbacks,
           on_app_started=app_started.append, app_started=app_started)
    module("modules.paths", models_path=str(models_path))
    import torch
    module("modules.devices", device=torch.device("cpu"), device_codeformer=torch.device("cpu"))
    if with_accordion:
        import gradio as gr

        class InputAccordion(gr.Checkbox):  # the webui's: a checkbox shown as an accordion's toggle
            def __init__(self, value, **kwargs):
                self.accordion_kwargs = {"label": kwargs.get("label")}
                super().__init__(value, **kwargs)

            def __enter__(self):
                self.accordion = gr.Accordion(**self.accordion_kwargs)
                self.accordion.__enter__()
                return self

            def __exit__(self, *exc):
                self.accordion.__exit__(*exc)

        module("modules.ui_components", InputAccordion=InputAccordion)
    for name, m in mods.items():
        if name != "modules":
            setattr(pkg, name.split(".", 1)[1], m)
    return mods


def load_script(name: str):
    """As the webui's script_loading.load_module: by path, module named after the file."""
    path = REPO / "scripts" / name
    spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def webui(monkeypatch, tmp_path):
    models = tmp_path / "webui_models"
    mods = build_webui(models)
    for name, m in mods.items():
        monkeypatch.setitem(sys.modules, name, m)
    monkeypatch.syspath_prepend(str(REPO))  # the webui puts the extension root on sys.path while loading
    return types.SimpleNamespace(modules=mods, shared=mods["modules.shared"], models=models,
                                 callbacks=mods["modules.script_callbacks"].registered)


@pytest.fixture(scope="module")
def tiny_restorer(tmp_path_factory):
    """A tiny random restorer file of a real architecture (lab/tiny_models.py)."""
    import tiny_models
    folder = tmp_path_factory.mktemp("tiny")
    return tiny_models.make_tiny_gfpgan(folder / "tiny_gfpgan.safetensors")


def install_restorer(webui, path: Path) -> str:
    """Put a restorer file into the webui's models dir (found by models.locate, A1111 folder)."""
    target = webui.models / "facerestore_models" / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.write_bytes(path.read_bytes())
    return path.name


def astronaut():
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.astronaut()  # public-domain NASA portrait shipped with scikit-image


# ---------------------------------------------------------------- registration and settings

def test_restorer_is_registered_once_with_settings(webui):
    load_script("facerefine_restorer.py")
    load_script("facerefine_restorer.py")  # the webui reloads scripts; still one entry
    names = [r.name() for r in webui.shared.face_restorers]
    assert names == ["FaceRefine"]
    assert len(webui.callbacks) == 2
    webui.callbacks[-1]()
    opts = webui.shared.opts
    for key in ("facerefine_model", "facerefine_device", "facerefine_unload"):
        assert key in opts.data_labels, key
        assert opts.data_labels[key].section == ("facerefine", "FaceRefine")
    assert opts.facerefine_unload is False and opts.facerefine_device == "auto"
    choices = opts.data_labels["facerefine_model"].component_args()["choices"]
    assert "auto" in choices and "none" in choices


def test_model_dropdown_lists_files_in_webui_models_dir(webui, tiny_restorer):
    name = install_restorer(webui, tiny_restorer)
    module = load_script("facerefine_restorer.py")
    assert name in module.service.restorer_choices()


def test_auto_restorer_uses_webui_files_not_detector_weights(webui):
    """models/GFPGAN holds facexlib's detector/parser weights next to GFPGANv1.4.pth."""
    gfpgan_dir = webui.models / "GFPGAN"
    gfpgan_dir.mkdir(parents=True)
    for name in ("detection_Resnet50_Final.pth", "parsing_parsenet.pth", "GFPGANv1.4.pth"):
        (gfpgan_dir / name).write_bytes(b"not read here")
    module = load_script("facerefine_restorer.py")
    choices = module.service.restorer_choices()
    assert "GFPGANv1.4.pth" in choices
    assert not {"detection_Resnet50_Final.pth", "parsing_parsenet.pth"} & set(choices)
    assert module.service.default_restorer() == "gfpgan-1.4"


def test_package_loads_from_extension_folder_under_another_name(tmp_path):
    """Inside the webui `facerefine` may be taken (or absent): the scripts import the folder itself."""
    code = f"""
import sys, types
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
import test_a1111_glue as t
from pathlib import Path
sys.modules["facerefine"] = types.ModuleType("facerefine")  # someone else's package of that name
sys.modules["facerefine"].__file__ = "/elsewhere/facerefine/__init__.py"
sys.modules.update(t.build_webui(Path({str(tmp_path)!r}), with_accordion=False))
restorer = t.load_script("facerefine_restorer.py")
extras = t.load_script("facerefine_extras.py")
assert restorer.service.__name__ == "facerefine_webui_extension.ui.service", restorer.service.__name__
assert extras.service is restorer.service
print("ok", sys.modules["modules.shared"].face_restorers[0].name())
"""
    env = dict(os.environ, PYTHONPATH="")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ok FaceRefine" in out.stdout


# ---------------------------------------------------------------- restore() ("Restore faces" in txt2img/img2img)

def test_restore_returns_same_shape_and_dtype(webui, tiny_restorer):
    webui.shared.opts.facerefine_model = install_restorer(webui, tiny_restorer)
    load_script("facerefine_restorer.py")
    face_restoration = webui.modules["modules.face_restoration"]
    image = astronaut()
    before = image.copy()
    out = face_restoration.restore_faces(image)
    assert isinstance(out, np.ndarray) and out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(image, before), "input mutated"
    assert not np.array_equal(out, image), "the astronaut's face was not restored"


def test_restore_on_london_face_changes_only_near_the_face(webui, tiny_restorer, london_dir):
    from PIL import Image
    webui.shared.opts.facerefine_model = install_restorer(webui, tiny_restorer)
    module = load_script("facerefine_restorer.py")
    image = np.asarray(Image.open(sorted((london_dir / "neutral").glob("*.jpg"))[0]).convert("RGB"))
    out = module.FaceRefineRestoration().restore(image)
    assert out.shape == image.shape and out.dtype == np.uint8
    changed = np.abs(out.astype(int) - image).max(axis=2) > 0
    assert changed.any()
    assert not changed[:40].any() and not changed[-40:].any(), "pixels far from the face changed"


def test_missing_weights_is_a_message_not_a_crash(webui, capsys):
    webui.shared.opts.facerefine_model = "codeformer"  # registry name; not on disk, and offline
    load_script("facerefine_restorer.py")
    image = astronaut()
    out = webui.modules["modules.face_restoration"].restore_faces(image)
    assert out is image or np.array_equal(out, image)
    err = capsys.readouterr().err
    assert "codeformer.pth" in err and "not found" in err


@pytest.mark.parametrize("bad", [np.zeros((8, 8, 3), np.uint8), np.zeros((0, 5, 3), np.uint8),
                                 np.full((64, 64, 3), np.nan, np.float32), "not an array"])
def test_bad_input_never_raises(webui, bad, capsys):
    module = load_script("facerefine_restorer.py")
    out = module.FaceRefineRestoration().restore(bad)
    assert out is bad or (isinstance(out, np.ndarray) and out.shape == bad.shape)


def test_unload_after_use_setting(webui, tiny_restorer, monkeypatch):
    from facerefine.core import pipeline
    cleared = []
    original = pipeline.clear_cache
    monkeypatch.setattr(pipeline, "clear_cache", lambda: cleared.append(1) or original())
    webui.shared.opts.facerefine_model = install_restorer(webui, tiny_restorer)
    module = load_script("facerefine_restorer.py")
    restorer = module.FaceRefineRestoration()
    restorer.restore(np.zeros((64, 64, 3), np.uint8))
    assert cleared == []
    webui.shared.opts.facerefine_unload = True
    out = restorer.restore(np.zeros((64, 64, 3), np.uint8))
    assert out.shape == (64, 64, 3) and cleared == [1]


# ---------------------------------------------------------------- Extras tab

def extras_ui(module):
    import gradio as gr
    script = module.FaceRefinePostprocessing()
    with gr.Blocks():
        controls = script.ui()
    return script, controls


@pytest.mark.parametrize("with_accordion", [True, False])
def test_extras_ui_controls(monkeypatch, tmp_path, with_accordion):
    for name, m in build_webui(tmp_path, with_accordion).items():
        monkeypatch.setitem(sys.modules, name, m)
    script, controls = extras_ui(load_script("facerefine_extras.py"))
    assert script.name == "FaceRefine"
    from facerefine.core.controls import shown_in
    assert list(controls) == ["enable", *[c.name for c in shown_in("extras")]]  # the table's, in its order
    assert list(controls) == ["enable", "restorer", "quality", "fidelity", "refine_steps", "identity_strength",
                              "reference", "visibility", "color_correction", "exemplar_detail"]
    assert controls["enable"].value is False  # off unless the user opens it
    from facerefine.core.paste.options import COLOR_MODES
    assert [value for _, value in controls["color_correction"].choices] == list(COLOR_MODES)


def test_extras_process_edits_pp_image(webui, tiny_restorer, capsys):
    from PIL import Image
    module = load_script("facerefine_extras.py")
    script, controls = extras_ui(module)
    pp_mod = webui.modules["modules.scripts_postprocessing"]
    pp = pp_mod.PostprocessedImage(Image.fromarray(astronaut()))
    original = pp.image
    args = {name: c.value for name, c in controls.items()}
    args.update(enable=True, restorer=install_restorer(webui, tiny_restorer), visibility=1.0)
    script.process(pp, **args)
    assert pp.image is not original and pp.image.size == original.size and pp.image.mode == "RGB"
    assert not np.array_equal(np.asarray(pp.image), np.asarray(original))
    assert pp.info["FaceRefine"] == args["restorer"] and pp.info["FaceRefine faces"] >= 1

    half = pp_mod.PostprocessedImage(original)
    script.process(half, **{**args, "visibility": 0.5})
    full_diff = np.abs(np.asarray(pp.image, float) - np.asarray(original, float)).sum()
    half_diff = np.abs(np.asarray(half.image, float) - np.asarray(original, float)).sum()
    assert 0 < half_diff < full_diff
    # the restorer's note is reported on every run, also when its loaded model is reused
    assert capsys.readouterr().err.count("GFPGAN has no lookup Transformer") == 2

    api = pp_mod.PostprocessedImage(original)  # the webui API fills arguments it was not given with None
    script.process(api, **{**{name: None for name in controls}, "enable": True, "restorer": args["restorer"]})
    assert api.image.size == original.size and api.info["FaceRefine quality"] == 1.0

    off = pp_mod.PostprocessedImage(original)
    script.process(off, **{**args, "enable": False})
    assert off.image is original and off.info == {}


def test_extras_missing_weights_and_rgba(webui, tiny_restorer):
    from PIL import Image
    module = load_script("facerefine_extras.py")
    script, controls = extras_ui(module)
    args = {name: c.value for name, c in controls.items()}
    pp_mod = webui.modules["modules.scripts_postprocessing"]
    pp = pp_mod.PostprocessedImage(Image.fromarray(astronaut()))
    original = pp.image
    script.process(pp, **{**args, "enable": True, "restorer": "codeformer"})
    assert pp.image is original
    assert pp.info["FaceRefine"].startswith("error:") and "codeformer.pth" in pp.info["FaceRefine"]

    rgba = np.dstack([astronaut(), np.linspace(0, 255, 512 * 512).reshape(512, 512).astype(np.uint8)])
    pp = pp_mod.PostprocessedImage(Image.fromarray(rgba, "RGBA"))
    script.process(pp, **{**args, "enable": True, "restorer": install_restorer(webui, tiny_restorer)})
    assert pp.image.mode == "RGBA"
    assert np.array_equal(np.asarray(pp.image)[:, :, 3], rgba[:, :, 3])


# ---------------------------------------------------------------- the API route /facerefine/v1/restore

def b64_png(array) -> str:
    import base64
    import io
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_api_route_restores_with_every_control_and_refuses_bad_requests(webui, tmp_path):
    """The route the webui mounts at start (on_app_started), driven through FastAPI's test client; the real
    webui runs it in tests/test_a1111_real_webui.py."""
    import base64
    import io

    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from PIL import Image
    load_script("facerefine_restorer.py")
    app = FastAPI()
    (started,) = webui.modules["modules.script_callbacks"].app_started
    started(None, app)
    client = TestClient(app)
    image = astronaut()
    answer = client.post("/facerefine/v1/restore", json={
        "image": b64_png(image), "restorer": "none", "quality": 0.5, "fidelity": 0.7, "visibility": 1.0,
        "refine_steps": 0, "identity_strength": 0.5, "reference": b64_png(image[:256, :256])})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["ok"] and body["faces"] == 1 and len(body["face_rows"]) == 1, body
    out = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["image"]))))
    assert out.shape == image.shape
    for bad, expected in (({"image": "not base64!"}, "not a readable base64 image"),
                          ({"image": b64_png(image), "quality": 7}, "quality must be within"),
                          ({"image": b64_png(image), "restorer": "/etc/passwd"}, "is not offered here"),
                          ({"image": b64_png(image), "colour": "lab"}, "unknown field"),
                          ({"image": b64_png(image), "reference": "/etc/passwd"}, "'reference' is not")):
        answer = client.post("/facerefine/v1/restore", json=bad)
        assert answer.status_code == 400 and expected in answer.json()["messages"][0], (bad, answer.text)


def test_restorer_setting_refresh_fits_the_webuis_gradio(webui, monkeypatch):
    """AUTOMATIC1111 1.10's gradio 3.41: Dropdown.update() takes no allow_custom_value (found on the real webui:
    TypeError on every page load); gradio 4+ (Forge) has no Dropdown.update and accepts it."""
    import gradio as gr
    module = load_script("facerefine_restorer.py")
    monkeypatch.setattr(gr.Dropdown, "update", staticmethod(lambda choices=None, value=None, visible=None: {}),
                        raising=False)
    args = module.restorer_dropdown_args()
    assert "allow_custom_value" not in args and "auto" in args["choices"]
    gr.Dropdown.update(**args)  # what the webui calls on refresh
    monkeypatch.delattr(gr.Dropdown, "update")
    assert module.restorer_dropdown_args()["allow_custom_value"] is True
