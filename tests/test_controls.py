"""One table of controls (core/controls.py): every front end offers its defaults, ranges and choices.

Front ends checked: the CLI's argparse (restore, crop), the ComfyUI nodes' INPUT_TYPES, the gradio app's
widgets, the A1111 Settings options and the A1111 Extras sliders, and ui.service.Settings.
"""
import argparse
import dataclasses
import sys

import pytest

from facerefine.core import controls
from facerefine.core.controls import BY_NAME, CONTROLS

# node input name -> control name, where a step node names its own option shorter
NODE_ALIASES = {"mode": "lookup_mode", "steps": "refine_steps", "strength": "refine_strength"}
# (node, input) whose default differs from the table on purpose
NODE_DEFAULT_EXCEPTIONS = {
    ("FaceRefineIdentityLatentRefine", "steps"),           # the refine node is the step itself: refine's 8 steps
    ("FaceRefineIdentityLatentRefine", "guidance_steps"),  # refine's default (8); the table's None means "default"
    ("FaceRefineIdentityLatentRefine", "identity_views"),  # refine's default; the table's None means "default"
    ("FaceRefineRestore", "restorer"),                     # a file on disk (ComfyUI lists files), not "auto"
}


def test_table_matches_the_steps_constants():
    from facerefine.core.crop.options import CROP_SIZES
    from facerefine.core.crop.detectors import DETECTORS
    from facerefine.core.lookup.options import MODES
    from facerefine.core.paste.options import COLOR_MODES
    from facerefine.core.paste.options import MASK_KINDS
    from facerefine.core.refine.options import DEFAULT_IDENTITY_STRENGTH, DEFAULT_SAMPLER, DEFAULT_STRENGTH, SAMPLERS
    from facerefine.core.refine.samplers import SAMPLER_FUNCTIONS
    assert controls.MODES == tuple(MODES) and controls.SAMPLERS == SAMPLERS == tuple(SAMPLER_FUNCTIONS)
    assert controls.DETECTORS == tuple(DETECTORS) and set(controls.CROP_SIZES) == set(CROP_SIZES)
    assert controls.MASK_KINDS == tuple(MASK_KINDS) and controls.COLOR_MODES == tuple(COLOR_MODES)
    assert (controls.DEFAULT_IDENTITY_STRENGTH, controls.DEFAULT_STRENGTH, controls.DEFAULT_SAMPLER) == (
        DEFAULT_IDENTITY_STRENGTH, DEFAULT_STRENGTH, DEFAULT_SAMPLER)


def test_every_row_names_a_real_option_and_a_valid_default():
    from facerefine.core.pipeline import RestoreOptions
    options = RestoreOptions()
    for c in CONTROLS:
        step, name = c.option.split(".")
        owner = options if step == "pipeline" else getattr(options, step)
        assert name in {f.name for f in dataclasses.fields(owner)}, c.name
        assert c.check(c.default) == c.default, c.name
        if c.kind in ("float", "int"):
            assert c.minimum <= c.default <= c.maximum if c.default is not None else True, c.name
        if c.kind == "choice":
            assert c.default in c.choices, c.name


def _argparse_actions(module_name: str) -> dict:
    import importlib
    module = importlib.import_module(f"facerefine.cli.{module_name}")
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    return {a.dest: a for a in p._actions}


@pytest.mark.parametrize("command", ["restore_cmd", "crop_cmd"])
def test_cli_matches_the_table(command):
    actions = _argparse_actions(command)
    checked = 0
    for name, action in actions.items():
        if name not in BY_NAME:
            continue
        c = BY_NAME[name]
        checked += 1
        assert action.option_strings == [c.cli_flag] and action.default == c.default, name
        assert action.help == c.help, name
        if c.kind == "choice":
            assert list(action.choices) == list(c.choices), name
        if c.kind in ("float", "int"):
            assert action.type(str(c.maximum)) == c.maximum
            with pytest.raises(argparse.ArgumentTypeError):
                action.type(str(c.maximum + 1))
    assert checked >= (20 if command == "restore_cmd" else 2)


def test_cli_restore_builds_options_from_the_table():
    from facerefine.cli import build_parser
    args = build_parser().parse_args(["restore", "x.png", "-o", "out", "--quality", "0.25", "--sampler", "euler",
                                      "--visibility", "0.5", "--refine-steps", "3"])
    values = {c.name: getattr(args, c.name) for c in CONTROLS if hasattr(args, c.name)}
    from facerefine.core.pipeline import RestoreOptions
    opts = RestoreOptions.from_values(**values)
    assert (opts.lookup.quality, opts.refine.sampler, opts.paste.visibility, opts.refine.steps) == (
        0.25, "euler", 0.5, 3)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["restore", "x.png", "-o", "out", "--quality", "1.5"])


def _node_inputs():
    import facerefine.nodes as nodes
    for cls_name, cls in nodes.NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        for group in ("required", "optional"):
            for name, entry in spec.get(group, {}).items():
                yield cls_name, name, entry


def test_comfy_nodes_match_the_table():
    checked = 0
    for cls_name, name, entry in _node_inputs():
        control_name = NODE_ALIASES.get(name, name)
        if control_name not in BY_NAME or not isinstance(entry, tuple) or len(entry) < 2:
            continue
        kind, spec = entry[0], entry[1]
        c = BY_NAME[control_name]
        if c.kind in ("image", "weights", "text") or (isinstance(kind, str) and kind.startswith(("FACE", "IMAGE"))):
            continue  # sockets (model handles, images) and free-form names the nodes offer as file dropdowns
        if name == "device":
            continue  # ComfyUI offers its own device list (runtime.DEVICE_CHOICES); 'auto' is models.device's
        checked += 1
        where = f"{cls_name}.{name}"
        if (cls_name, name) not in NODE_DEFAULT_EXCEPTIONS:
            assert spec.get("default") == c.default, where
        if c.kind in ("float", "int"):
            assert kind == {"float": "FLOAT", "int": "INT"}[c.kind], where
            assert (spec["min"], spec["max"], spec["step"]) == (c.minimum, c.maximum, c.step), where
        elif c.kind == "choice":
            assert list(kind) == list(c.choices), where
        elif c.kind == "bool":
            assert kind == "BOOLEAN", where
        assert spec.get("tooltip"), where
    assert checked >= 20


class _Widget:
    def __init__(self, kind, *args, **kwargs):
        self.kind, self.args, self.kwargs = kind, args, kwargs
        self.elem_id = kwargs.get("elem_id")

    def __getattr__(self, name):  # .click(...).then(...), .select, .change...
        return lambda *a, **k: self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _slider_spec(w):
    a = w.args
    return dict(minimum=a[0], maximum=a[1], value=w.kwargs["value"], step=w.kwargs["step"])


def _check_widgets(widgets, by_elem):
    checked = 0
    for elem_id, name in by_elem.items():
        w = widgets[elem_id]
        c = BY_NAME[name]
        if c.kind in ("float", "int"):
            assert w.kind == "Slider", elem_id
            assert _slider_spec(w) == dict(minimum=c.minimum, maximum=c.maximum, value=c.default, step=c.step), elem_id
        else:
            choices = w.args[0] if w.args else w.kwargs["choices"]
            assert list(choices) == list(c.choices) and w.kwargs["value"] == c.default, elem_id
        checked += 1
    return checked


def test_gradio_app_matches_the_table(monkeypatch):
    pytest.importorskip("gradio")
    import gradio as gr

    from facerefine.ui import gradio_app
    widgets = {}

    def factory(kind):
        def make(*args, **kwargs):
            w = _Widget(kind, *args, **kwargs)
            if w.elem_id:
                widgets[w.elem_id] = w
            return w
        return make
    for kind in GRADIO_KINDS:
        monkeypatch.setattr(gr, kind, factory(kind))
    gradio_app.build_app()
    offered = {f"fr-{c.name.replace('_', '-')}": c.name for c in controls.shown_in("app")}
    assert set(offered) <= set(widgets)
    assert _check_widgets(widgets, {e: n for e, n in offered.items() if BY_NAME[n].choices or
                                     BY_NAME[n].kind in ("float", "int")}) == 9


GRADIO_KINDS = ("Slider", "Dropdown", "Checkbox", "Textbox", "File", "Image", "Markdown", "Button", "ImageSlider",
                "Gallery", "Dataframe", "State", "Blocks", "Row", "Column", "Accordion")


def test_service_settings_defaults_are_the_table():
    from facerefine.ui.service import Settings
    assert vars(Settings()) == {c.name: c.default for c in CONTROLS}
    with pytest.raises(TypeError, match="unknown setting"):
        Settings(colour="lab")


def test_a1111_settings_and_extras_match_the_table(tmp_path, monkeypatch):
    import test_a1111_glue as glue
    mods = glue.build_webui(tmp_path / "models")
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    restorer_script = glue.load_script("facerefine_restorer.py")
    restorer_script.on_ui_settings()
    labels = sys.modules["modules.shared"].opts.data_labels
    webui = [c.name for c in controls.shown_in("webui")]
    assert len(webui) >= 7
    for name in webui:
        info, c = labels[f"facerefine_{name}"], BY_NAME[name]
        assert info.default == c.default, name
        if c.kind in ("float", "int"):
            assert info.component_args == {"minimum": c.minimum, "maximum": c.maximum, "step": c.step}, name
        else:
            assert info.component_args == {"choices": list(c.choices)}, name
    settings = restorer_script.settings_from_opts()
    for name in webui:
        assert getattr(settings, name) == BY_NAME[name].default, name

    _script, sliders = glue.extras_ui(glue.load_script("facerefine_extras.py"))  # real gradio components
    for name in ("quality", "fidelity", "visibility", "refine_steps", "identity_strength"):
        w, c = sliders[name], BY_NAME[name]
        assert (w.minimum, w.maximum, w.step, w.value) == (c.minimum, c.maximum, c.step, c.default), name


# ---------------------------------------------------------------- every front end offers what its row says

def _cli_controls() -> set:
    from facerefine.cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest for a in sub.choices["restore"]._actions} & set(BY_NAME)


def _node_controls(cls_name: str) -> dict:
    import facerefine.nodes as nodes
    spec = nodes.NODE_CLASS_MAPPINGS[cls_name].INPUT_TYPES()
    return {group: [n for n in spec.get(group, {}) if n in BY_NAME] for group in ("required", "optional")}


def test_each_front_end_offers_the_rows_shown_there():
    shown = {front: [c.name for c in controls.shown_in(front)] for front in controls.FRONT_ENDS}
    assert _cli_controls() == set(shown["cli"])
    for cls_name, front in (("FaceRefineRestore", "node"), ("FaceRefineRestoreVideo", "video")):
        offered = _node_controls(cls_name)
        assert offered["required"] + offered["optional"] == [n for n in shown[front] if BY_NAME[n].required] + [
            n for n in shown[front] if not BY_NAME[n].required], cls_name
    from facerefine.ui import service
    assert list(service.api_controls()) == shown["api"]


def test_saved_workflows_keep_their_input_order():
    """ComfyUI saves widget values by position: the nodes' inputs keep the order of the first version."""
    import facerefine.nodes as nodes
    spec = nodes.NODE_CLASS_MAPPINGS["FaceRefineRestore"].INPUT_TYPES()
    assert list(spec["required"]) == ["image", "restorer", "quality", "fidelity", "refine_steps", "identity_strength",
                                      "detector", "crop_size", "visibility", "color_correction", "seed", "device"]
    assert list(spec["optional"]) == ["reference", "allow_color", "exemplar_detail"]
    spec = nodes.NODE_CLASS_MAPPINGS["FaceRefineRestoreVideo"].INPUT_TYPES()
    assert list(spec["required"]) == ["images", "restorer", "quality", "fidelity", "temporal", "smooth_landmarks",
                                      "fps", "chunk", "detector", "crop_size", "visibility", "color_correction",
                                      "device", "temporal_mode"]
    assert not spec.get("optional")


# ---------------------------------------------------------------- adding a control = one row + one field

class Reached(Exception):
    """Raised where a front end hands its options to the pipeline: carries them."""

    def __init__(self, options):
        super().__init__("reached the pipeline")
        self.options = options


@pytest.fixture
def dummy_knob(monkeypatch):
    """A new control: one row in the table (offered everywhere by default) and one field of the lookup step's
    options dataclass."""
    from facerefine.core import pipeline
    from facerefine.core.lookup.options import LookupOptions
    row = controls.Control("dummy_knob", "float", 0.25, "a knob only this test has", "lookup.dummy_knob",
                           0.0, 1.0, 0.05, label="Dummy knob")
    monkeypatch.setattr(controls, "CONTROLS", controls.CONTROLS + (row,))
    monkeypatch.setattr(controls, "BY_NAME", {**controls.BY_NAME, row.name: row})
    options = dataclasses.make_dataclass("LookupOptions", [("dummy_knob", float, 0.0)], bases=(LookupOptions,),
                                         frozen=True)
    monkeypatch.setattr(pipeline, "LookupOptions", options)
    return row


def test_a_new_row_reaches_the_cli(dummy_knob):
    from facerefine.cli import build_parser, restore_cmd
    args = build_parser().parse_args(["restore", "x.png", "-o", "out", "--dummy-knob", "0.7"])
    assert restore_cmd._options(args, "cpu").lookup.dummy_knob == 0.7
    with pytest.raises(SystemExit):
        build_parser().parse_args(["restore", "x.png", "-o", "out", "--dummy-knob", "1.5"])


def test_a_new_row_reaches_the_comfy_nodes(dummy_knob, monkeypatch):
    import torch

    import facerefine.core.video as video
    from facerefine.nodes import all_in_one_nodes, video_nodes
    for cls in (all_in_one_nodes.FaceRefineRestore, video_nodes.FaceRefineRestoreVideo):
        spec = cls.INPUT_TYPES()
        assert "dummy_knob" not in spec["required"]  # a new input is optional: saved workflows keep loading
        assert spec["optional"]["dummy_knob"] == ("FLOAT", {"default": 0.25, "tooltip": "a knob only this test has",
                                                            "min": 0.0, "max": 1.0, "step": 0.05})

    def reached(options, *a, **k):
        raise Reached(options)
    monkeypatch.setattr(all_in_one_nodes, "_steps", reached)
    monkeypatch.setattr(video, "SequenceRestorer", reached)
    image = torch.zeros(1, 32, 32, 3)
    with pytest.raises(Reached) as node:
        all_in_one_nodes.FaceRefineRestore().restore(image, restorer="none", device="cpu", dummy_knob=0.6)
    with pytest.raises(Reached) as clip:
        video_nodes.FaceRefineRestoreVideo().restore(image, restorer="none", device="cpu", dummy_knob=0.4)
    assert (node.value.options.lookup.dummy_knob, clip.value.options.lookup.dummy_knob) == (0.6, 0.4)


def test_a_new_row_reaches_the_gradio_app(dummy_knob, monkeypatch):
    pytest.importorskip("gradio")
    import gradio as gr

    from facerefine.core import pipeline
    from facerefine.ui import gradio_app, service
    widgets, clicks = {}, []

    def factory(kind):
        def make(*args, **kwargs):
            w = _Widget(kind, *args, **kwargs)
            if kind == "Button":
                w.click = lambda *a, **k: clicks.append(a) or w
            if w.elem_id:
                widgets[w.elem_id] = w
            return w
        return make
    for kind in GRADIO_KINDS:
        monkeypatch.setattr(gr, kind, factory(kind))
    gradio_app.build_app()
    assert _slider_spec(widgets["fr-dummy-knob"]) == dict(minimum=0.0, maximum=1.0, value=0.25, step=0.05)
    (restore, inputs, _outputs), = clicks
    assert widgets["fr-dummy-knob"] in inputs
    monkeypatch.setattr(gradio_app, "_restore_uploads_or_raise", lambda paths, settings, *a: Reached(settings))
    values = [0.8 if w is widgets["fr-dummy-knob"] else None for w in inputs[1:]]
    settings = restore(None, None, ["photo.png"], *values).options
    assert service.build_options(pipeline, settings).lookup.dummy_knob == 0.8


def test_a_new_row_reaches_the_a1111_settings_extras_and_api(dummy_knob, tmp_path, monkeypatch):
    import numpy as np

    import test_a1111_glue as glue
    from facerefine.core import pipeline
    for name, mod in glue.build_webui(tmp_path / "models").items():
        monkeypatch.setitem(sys.modules, name, mod)
    restorer_script = glue.load_script("facerefine_restorer.py")
    restorer_script.on_ui_settings()
    info = sys.modules["modules.shared"].opts.data_labels["facerefine_dummy_knob"]
    assert (info.default, info.component_args) == (0.25, {"minimum": 0.0, "maximum": 1.0, "step": 0.05})
    assert restorer_script.settings_from_opts().dummy_knob == 0.25

    extras = glue.load_script("facerefine_extras.py")
    script, inputs = glue.extras_ui(extras)
    assert (inputs["dummy_knob"].minimum, inputs["dummy_knob"].value) == (0.0, 0.25)
    def reached(image, settings):
        raise Reached(settings)
    monkeypatch.setattr(extras.service, "restore_pil", reached)
    pp = sys.modules["modules.scripts_postprocessing"].PostprocessedImage(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(Reached) as tab:
        script.process(pp, enable=True, restorer="none", dummy_knob=0.55)
    assert extras.service.build_options(pipeline, tab.value.options).lookup.dummy_knob == 0.55

    from facerefine.ui import service
    assert "dummy_knob" in service.api_controls()
    settings = service.settings_from_request({"dummy_knob": 0.9}, service.Settings())
    assert service.build_options(pipeline, settings).lookup.dummy_knob == 0.9
    with pytest.raises(service.RequestError, match="dummy_knob must be within"):
        service.settings_from_request({"dummy_knob": 2}, service.Settings())
