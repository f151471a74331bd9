"""The one table of user controls: name, type, default, range or choices, help, and the step option it sets.

Every front end builds its inputs from the rows it is named in (``shown``, ``shown_in(front)``): the CLI's argparse
(``add_arguments``), the ComfyUI nodes' INPUT_TYPES (``comfy_input``), the gradio app and the A1111 extension
(``gradio_kwargs``, ``a1111_option``), the JSON API; and hands the values through: ``RestoreOptions.from_values``
sends each value to the step that owns it (``option``: "lookup.quality"), whose options type normalises it.
tests/test_controls.py checks that every front end offers the defaults, ranges and choices written here.

To add a control: add one row to CONTROLS (and the field to the step's options dataclass); it is offered by
every front end unless the row's ``shown`` says otherwise.
This module imports nothing heavy (argparse builds every command's parser at start-up); the choices written
here are checked against the steps' own constants (SAMPLERS, MODES, DETECTORS...) by tests/test_controls.py.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import FaceRefineError
from .none import NONE_SPELLINGS, is_none  # noqa: F401 - the front ends read them here
from .lookup.options import MODES
from .refine.options import DEFAULT_IDENTITY_STRENGTH, DEFAULT_SAMPLER, DEFAULT_STRENGTH, SAMPLERS

STEPS = ("crop", "lookup", "refine", "paste", "pipeline")

# The front ends that offer controls: the CLI's restore command, the ComfyUI all-in-one and video nodes, the
# gradio app, A1111's Settings -> FaceRefine ("webui") and Extras tab, and the JSON API (ui.service.Settings).
FRONT_ENDS = ("cli", "node", "video", "app", "webui", "extras", "api")


@dataclass(frozen=True)
class Control:
    name: str                           # value name everywhere: from_values key, node input, CLI --name-with-dashes
    kind: str                           # float | int | choice | text | bool | image | weights
    default: Any
    help: str
    option: str                         # "<step>.<field>" of RestoreOptions (step: crop|lookup|refine|paste|pipeline)
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    step: Optional[float] = None
    choices: tuple = ()
    label: str = ""
    flag: str = ""                      # CLI flag when it is not --name-with-dashes
    shown: tuple = FRONT_ENDS           # the front ends offering it: a new row is offered everywhere
    required: bool = False              # a required input of the nodes: only those of the first node version
    #                                     (a new control is an optional input, so saved workflows keep loading)

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def title(self) -> str:
        return self.label or self.name.replace("_", " ").capitalize()

    def check(self, value: Any) -> Any:
        """The value converted to the control's type; out of range or unknown choices raise ValueError."""
        if value is None or self.kind in ("text", "image", "weights"):
            return value
        if self.kind == "bool":
            return bool(value)
        if self.kind == "choice":
            typed = type(self.choices[0])(value) if self.choices else value
            if self.choices and typed not in self.choices:
                raise ValueError(f"{self.name}: '{value}' is not one of {list(self.choices)}")
            return typed
        typed = int(value) if self.kind == "int" else float(value)
        if (self.minimum is not None and typed < self.minimum) or (self.maximum is not None and typed > self.maximum):
            raise ValueError(f"{self.name} must be within {self.minimum}..{self.maximum}, got {value}")
        return typed


# the same as the steps' constants (tests/test_controls.py checks): core.crop.detectors.DETECTORS, core.crop.align.CROP_SIZES,
# core.paste.masks.MASK_KINDS, core.paste.color.COLOR_MODES (MODES comes from core/lookup/options.py, SAMPLERS and
# the refine DEFAULT_* from core/refine/options.py)
DETECTORS = ("auto", "mtcnn", "retinaface", "retinaface-resnet50", "retinaface-mobilenet")
CROP_SIZES = (512, 256, 1024)
MASK_KINDS = ("auto", "landmarks", "parsenet", "bisenet", "box")
COLOR_MODES = ("none", "lab", "lowfreq")
ID_MODELS = ("auto", "arcface", "dlib")

CLI_ONLY = ("cli",)

CONTROLS: tuple[Control, ...] = (
    # --- lookup (restorer + IQPFR quality slider)
    Control("restorer", "weights", "auto", "auto (a community restorer you have, else the embedded compact model), a "
            "registry name, a weights path, or none (crop + paste only)", "lookup.restorer", label="Restorer",
            shown=("cli", "node", "video", "app", "extras", "api"), required=True),
    Control("quality", "float", 1.0, "IQPFR quality slider 0..1: the NR-IQA score the lookup aims for "
            "(0 = the base model's choice)", "lookup.quality", 0.0, 1.0, 0.05, label="Quality", required=True),
    Control("fidelity", "float", 0.5, "fidelity weight 0..1 (0 = quality, 1 = faithful to the input)",
            "lookup.fidelity", 0.0, 1.0, 0.05, label="Fidelity", required=True),
    Control("lookup_mode", "choice", "auto", "how the quality slider acts: trained conditioning, critic-steered "
            "codes (training-free) or off; auto = trained if the restorer has conditioning weights",
            "lookup.mode", choices=MODES, label="Quality mode", shown=CLI_ONLY),
    Control("quality_condition", "text", None, "IQPFR quality-conditioning weights for a CodeFormer restorer "
            "(name or path)", "lookup.quality_condition", shown=CLI_ONLY),
    Control("critic", "text", None, "NR-IQA critic for training-free steering (default face-iqa)", "lookup.critic",
            shown=CLI_ONLY),
    # --- refine (CLR-Face identity-guided latent refinement)
    Control("refine_steps", "int", 0, "identity-guided latent refine steps (0 = off; 10-20 recommended); needs a "
            "codebook restorer (CodeFormer/IQPFR)", "refine.steps", 0, 200, 1, label="Identity refine steps",
            shown=("cli", "node", "app", "webui", "extras", "api"), required=True),
    Control("identity_strength", "float", DEFAULT_IDENTITY_STRENGTH, "identity guidance strength during refine "
            "(0 = prior only)", "refine.identity_strength", 0.0, 10.0, 0.05, label="Identity strength",
            shown=("cli", "node", "app", "webui", "extras", "api"), required=True),
    Control("refine_strength", "float", DEFAULT_STRENGTH, "how much of the lookup latent is re-noised, 0..1 "
            "(SDEdit strength)", "refine.strength", 0.0, 1.0, 0.05, label="Refine strength", shown=CLI_ONLY),
    Control("sampler", "choice", DEFAULT_SAMPLER, "refine sampler", "refine.sampler", choices=SAMPLERS,
            label="Sampler", shown=CLI_ONLY),
    Control("latent_prior", "text", None, "latent prior weights (name or path; 'none' = identity guidance only)",
            "refine.latent_prior", shown=CLI_ONLY),
    Control("id_model", "weights", "auto", "identity network for guidance: auto (ArcFace if "
            "recognition_arcface_ir_se50.pth is on disk, else the embedded dlib ResNet, no download), arcface, "
            "dlib, a weights path, or none (no identity guidance: the latent prior alone)", "refine.id_model",
            choices=ID_MODELS, label="Identity network", shown=("cli", "app", "webui", "api")),
    Control("identity_recovery", "text", None, "trained Identity Recovery Network + mask file",
            "refine.identity_recovery", shown=CLI_ONLY),
    Control("identity_target", "choice", "auto", "auto = reference if given, else an Identity Recovery Network you "
            "load, else the degraded face; recovery = the IRN (the one shipped for the restorer if none is named)",
            "refine.target", choices=("auto", "reference", "recovery", "lq"), label="Identity target", shown=CLI_ONLY),
    Control("guidance_steps", "int", None, "refine steps that compute a fresh identity gradient (default 8: every "
            "step at the default 8 refine steps; fewer = faster, the others reuse the last gradient)",
            "refine.guidance_steps", 1, 200, 1, shown=CLI_ONLY),
    Control("identity_views", "int", None, "augmented views of the decoded face averaged into each identity "
            "gradient (default 4; 1 = the face alone). More views keep changes that survive re-framing and blur "
            "(identity) and drop patterns only the guide network sees; each adds one identity-network pass",
            "refine.identity_views", 1, 16, 1, shown=CLI_ONLY),
    Control("reference_detail", "float", 1.0, "with a reference photo: how much of its fine detail (eyes, brows, "
            "lips) goes into restored faces that lost theirs, registered by optical flow; sharp faces and other "
            "people are left alone; 0 = off. Works without refine steps", "refine.reference_detail", 0.0, 1.0, 0.05,
            label="Reference detail", shown=CLI_ONLY),
    Control("reference", "image", None, "photo of the same person: the identity target of refine; its fine detail "
            "goes into blurred faces, also without refine steps",
            "refine.reference", label="Reference photo", shown=("cli", "node", "app", "extras", "api")),
    # --- crop
    Control("detector", "choice", "auto", "face detector: auto = RetinaFace when its weights are present, else "
            "the embedded MTCNN", "crop.detector", choices=DETECTORS, label="Face detector",
            shown=("cli", "node", "video", "app", "webui", "api"), required=True),
    Control("crop_size", "choice", 512, "aligned face size in pixels", "crop.crop_size",
            choices=CROP_SIZES, label="Crop size", shown=("cli", "node", "video"), required=True),
    # --- paste back
    Control("mask", "choice", "auto", "paste mask: auto = face parsing if its weights are present, else the "
            "landmark face outline", "paste.mask", choices=MASK_KINDS, label="Mask", shown=CLI_ONLY),
    Control("erode", "float", 8.0, "shrink the mask (pixels at 512 crop scale)", "paste.erode", 0.0, 128.0, 1.0,
            shown=CLI_ONLY),
    Control("feather", "float", 16.0, "soft edge width (pixels at 512 crop scale)", "paste.feather", 0.0, 128.0, 1.0,
            shown=CLI_ONLY),
    Control("protect_hair", "bool", False, "keep the original hair and hairline", "paste.protect_hair",
            shown=CLI_ONLY),
    Control("visibility", "float", 1.0, "0 = original face, 1 = restored face", "paste.visibility", 0.0, 1.0, 0.05,
            label="Visibility", shown=("cli", "node", "video", "app", "extras", "api"), required=True),
    Control("color_correction", "choice", "lab", "match the restored face's colours to the original: none, lab "
            "(mean/std in LAB) or lowfreq (keep the original's low frequencies)", "paste.color_correction",
            choices=COLOR_MODES, label="Colour correction", required=True),
    # --- whole run
    Control("metric", "text", None, "NR-IQA metric: score the faces before and after restoration",
            "pipeline.metric", label="Quality metric", shown=("app", "api")),
    Control("seed", "int", 0, "random seed (refine noise)", "pipeline.seed", 0, 0xFFFFFFFF, 1, label="Seed",
            shown=("cli", "node", "api"), required=True),
    Control("device", "text", "auto", "auto (the host's device, else cuda when available, else cpu) | cpu | "
            "cuda[:N]", "pipeline.device", label="Device", shown=("cli", "node", "video"), required=True),
    Control("allow_color", "bool", False, "let the restorer colour a grayscale (black-and-white) photo; off: a "
            "grayscale input comes back grayscale, only its luminance is restored", "pipeline.allow_color",
            label="Allow colour on grayscale photos", shown=("cli", "node", "app", "api")),
    # added after the first node version: last, so saved workflows keep their widget order
    Control("exemplar_detail", "float", 1.0, "eye detail (lids, lashes, irises) from the nearest of 20 bundled "
            "composite faces, for eyes too blurred to hold any; registered by optical flow, luma only, times the "
            "quality slider, fading out from fidelity 0.5 to 1; mildly damaged and sharp faces are left alone; "
            "0 = off", "lookup.exemplar_detail", 0.0, 1.0, 0.05, label="Exemplar detail",
            shown=("cli", "node", "app", "webui", "extras", "api")),
)

BY_NAME: dict[str, Control] = {c.name: c for c in CONTROLS}


def control(name: str) -> Control:
    return BY_NAME[name]


def shown_in(front: str) -> tuple[Control, ...]:
    """The controls a front end (one of FRONT_ENDS) offers, in table order."""
    return tuple(c for c in CONTROLS if front in c.shown)


def split_values(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{control name: value} -> {step: {field: value}}; None values keep the step's default."""
    parts: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        if name not in BY_NAME:
            raise TypeError(f"unknown control '{name}' (core/controls.py lists {sorted(BY_NAME)})")
        if value is None:
            continue
        c = BY_NAME[name]
        step, field_name = c.option.split(".")
        try:
            parts.setdefault(step, {})[field_name] = c.check(value)
        except (TypeError, ValueError) as err:
            raise FaceRefineError(str(err)) from None
    return parts


# --- front ends --------------------------------------------------------------------------------------------

def add_argument(parser, name: str, **overrides) -> None:
    """argparse option for a control (``--name-with-dashes``, its type, default, choices and help)."""
    c = BY_NAME[name]
    kw: dict[str, Any] = {"dest": name, "default": c.default, "help": c.help}
    if c.kind == "bool":
        kw["action"] = "store_true"
    elif c.kind in ("float", "int"):
        kw["type"] = _ranged(c)
    elif c.kind == "choice":
        kw["type"] = type(c.choices[0])
        kw["choices"] = list(c.choices)
    kw.update(overrides)
    parser.add_argument(c.cli_flag, **kw)


def add_arguments(parser, front: str = "cli", groups: Optional[dict] = None) -> None:
    """argparse options of every control the front end offers; a step's controls go into ``groups[step]``
    (an argument group) when there is one, the others into ``parser``."""
    for c in shown_in(front):
        add_argument((groups or {}).get(c.option.split(".")[0], parser), c.name)


def values_from_args(args) -> dict[str, Any]:
    """{control name: value} of the controls an argparse namespace holds."""
    return {c.name: getattr(args, c.name) for c in CONTROLS if hasattr(args, c.name)}


def _ranged(c: Control):
    def parse(text: str):
        try:
            return c.check(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    parse.__name__ = c.kind
    return parse


COMFY_TYPES = {"float": "FLOAT", "int": "INT", "bool": "BOOLEAN", "text": "STRING", "image": "IMAGE"}


def comfy_input(name: str, choices: Optional[list] = None, default: Any = None, tooltip: str = "") -> tuple:
    """ComfyUI INPUT_TYPES entry: ("FLOAT", {default, min, max, step, tooltip}) or ([choices], {default...});
    an image is an IMAGE socket. ``choices``/``default`` override the table for lists only known at run time
    (weights files)."""
    c = BY_NAME[name]
    if c.kind == "image":
        return (COMFY_TYPES[c.kind], {"tooltip": tooltip or c.help})
    spec: dict[str, Any] = {"default": c.default if default is None else default, "tooltip": tooltip or c.help}
    if c.kind in ("choice", "weights") or choices is not None:
        return (list(choices if choices is not None else c.choices), spec)
    if c.kind in ("float", "int"):
        spec.update(min=c.minimum, max=c.maximum, step=c.step)
        if c.kind == "int":
            spec = {k: (int(v) if isinstance(v, float) else v) for k, v in spec.items()}
    if c.kind == "text" and spec["default"] is None:
        spec["default"] = ""
    return (COMFY_TYPES[c.kind], spec)


def gradio_kwargs(name: str) -> dict[str, Any]:
    """Keyword arguments of the gradio widget for a control (Slider: minimum/maximum/step/value; Dropdown:
    choices/value), with its label and help."""
    c = BY_NAME[name]
    kw: dict[str, Any] = {"value": c.default, "label": c.title, "info": c.help}
    if c.kind in ("float", "int"):
        kw.update(minimum=c.minimum, maximum=c.maximum, step=c.step)
    elif c.kind in ("choice", "weights") and c.choices:
        kw["choices"] = list(c.choices)
    return kw


def a1111_option(name: str) -> tuple[Any, str, dict]:
    """(default, label, component args) of an A1111 ``shared.OptionInfo`` for a control."""
    c = BY_NAME[name]
    if c.kind in ("float", "int"):
        return c.default, f"FaceRefine: {c.title.lower()}", {"minimum": c.minimum, "maximum": c.maximum,
                                                              "step": c.step}
    if c.kind in ("choice", "weights") and c.choices:
        return c.default, f"FaceRefine: {c.title.lower()}", {"choices": list(c.choices)}
    return c.default, f"FaceRefine: {c.title.lower()}", {}


__all__ = ["BY_NAME", "CONTROLS", "Control", "FRONT_ENDS", "NONE_SPELLINGS", "a1111_option", "add_argument",
           "add_arguments", "comfy_input", "control", "gradio_kwargs", "is_none", "shown_in", "split_values",
           "values_from_args"]
