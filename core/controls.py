"""The one table of user controls: name, type, default, range or choices, help, and the step option it sets.

Every front end reads it: the CLI's argparse (``add_argument``), the ComfyUI nodes' INPUT_TYPES
(``comfy_input``), the gradio app and the A1111 extension (``gradio_kwargs``, ``a1111_option``).
``RestoreOptions.from_values`` sends each value to the step that owns it (``option``: "lookup.quality").
tests/test_controls.py checks that every front end offers the defaults, ranges and choices written here.

To add a control: add one row to CONTROLS (and the field to the step's options dataclass).
This module imports nothing heavy (argparse builds every command's parser at start-up); the choices written
here are checked against the steps' own constants (SAMPLERS, MODES, DETECTORS...) by tests/test_controls.py.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import FaceRefineError

STEPS = ("crop", "lookup", "refine", "paste", "pipeline")

# "no model" as users and hosts spell it (CLI "none", ComfyUI/A1111 dropdowns "(none)", empty text fields)
NONE_SPELLINGS = ("", "none", "(none)")


def is_none(value: Any) -> bool:
    """True for a value that means "no model": None or any of NONE_SPELLINGS (any case, spaces ignored)."""
    return value is None or str(value).strip().lower() in NONE_SPELLINGS


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


# the same as the steps' constants (tests/test_controls.py checks): core.lookup.lookup.MODES,
# core.refine.samplers.SAMPLERS, core.crop.detectors.DETECTORS, core.crop.align.CROP_SIZES,
# core.paste.masks.MASK_KINDS, core.paste.color.COLOR_MODES, core.refine.refine.DEFAULT_*
MODES = ("auto", "trained", "training-free", "off")
SAMPLERS = ("dpmpp_2m", "euler", "heun", "ddim")
DETECTORS = ("auto", "mtcnn", "retinaface", "retinaface-resnet50", "retinaface-mobilenet")
CROP_SIZES = (512, 256, 1024)
MASK_KINDS = ("auto", "landmarks", "parsenet", "bisenet", "box")
COLOR_MODES = ("none", "lab", "lowfreq")
ID_MODELS = ("auto", "arcface", "dlib")
DEFAULT_IDENTITY_STRENGTH = 0.5
DEFAULT_STRENGTH = 0.4
DEFAULT_SAMPLER = "dpmpp_2m"

CONTROLS: tuple[Control, ...] = (
    # --- lookup (restorer + IQPFR quality slider)
    Control("restorer", "weights", "auto", "auto (a community restorer you have, else the embedded compact model), a "
            "registry name, a weights path, or none (crop + paste only)", "lookup.restorer", label="Restorer"),
    Control("quality", "float", 1.0, "IQPFR quality slider 0..1: the NR-IQA score the lookup aims for "
            "(0 = the base model's choice)", "lookup.quality", 0.0, 1.0, 0.05, label="Quality"),
    Control("fidelity", "float", 0.5, "fidelity weight 0..1 (0 = quality, 1 = faithful to the input)",
            "lookup.fidelity", 0.0, 1.0, 0.05, label="Fidelity"),
    Control("lookup_mode", "choice", "auto", "how the quality slider acts: trained conditioning, critic-steered "
            "codes (training-free) or off; auto = trained if the restorer has conditioning weights",
            "lookup.mode", choices=MODES, label="Quality mode"),
    Control("quality_condition", "text", None, "IQPFR quality-conditioning weights for a CodeFormer restorer "
            "(name or path)", "lookup.quality_condition"),
    Control("critic", "text", None, "NR-IQA critic for training-free steering (default face-iqa)", "lookup.critic"),
    # --- refine (CLR-Face identity-guided latent refinement)
    Control("refine_steps", "int", 0, "identity-guided latent refine steps (0 = off; 10-20 recommended); needs a "
            "codebook restorer (CodeFormer/IQPFR)", "refine.steps", 0, 200, 1, label="Identity refine steps"),
    Control("identity_strength", "float", DEFAULT_IDENTITY_STRENGTH, "identity guidance strength during refine "
            "(0 = prior only)", "refine.identity_strength", 0.0, 10.0, 0.05, label="Identity strength"),
    Control("refine_strength", "float", DEFAULT_STRENGTH, "how much of the lookup latent is re-noised, 0..1 "
            "(SDEdit strength)", "refine.strength", 0.0, 1.0, 0.05, label="Refine strength"),
    Control("sampler", "choice", DEFAULT_SAMPLER, "refine sampler", "refine.sampler", choices=SAMPLERS,
            label="Sampler"),
    Control("latent_prior", "text", None, "latent prior weights (name or path; 'none' = identity guidance only)",
            "refine.latent_prior"),
    Control("id_model", "weights", "auto", "identity network for guidance: auto (ArcFace if "
            "recognition_arcface_ir_se50.pth is on disk, else the embedded dlib ResNet, no download), arcface, "
            "dlib, a weights path, or none (no identity guidance: the latent prior alone)", "refine.id_model",
            choices=ID_MODELS, label="Identity network"),
    Control("identity_recovery", "text", None, "trained Identity Recovery Network + mask file",
            "refine.identity_recovery"),
    Control("identity_target", "choice", "auto", "auto = reference if given, else an Identity Recovery Network you "
            "load, else the degraded face; recovery = the IRN (the one shipped for the restorer if none is named)",
            "refine.target", choices=("auto", "reference", "recovery", "lq"), label="Identity target"),
    Control("guidance_steps", "int", None, "refine steps that compute a fresh identity gradient (default 8: every "
            "step at the default 8 refine steps; fewer = faster, the others reuse the last gradient)",
            "refine.guidance_steps", 1, 200, 1),
    Control("identity_views", "int", None, "augmented views of the decoded face averaged into each identity "
            "gradient (default 4; 1 = the face alone). More views keep changes that survive re-framing and blur "
            "(identity) and drop patterns only the guide network sees; each adds one identity-network pass",
            "refine.identity_views", 1, 16, 1),
    Control("reference_detail", "float", 1.0, "with a reference photo: how much of its fine detail (eyes, brows, "
            "lips) goes into restored faces that lost theirs, registered by optical flow; sharp faces and other "
            "people are left alone; 0 = off. Works without refine steps", "refine.reference_detail", 0.0, 1.0, 0.05,
            label="Reference detail"),
    Control("reference", "image", None, "reference photo of the same person (identity target of refine)",
            "refine.reference", label="Reference photo"),
    # --- crop
    Control("detector", "choice", "auto", "face detector: auto = RetinaFace when its weights are present, else "
            "the embedded MTCNN", "crop.detector", choices=DETECTORS, label="Face detector"),
    Control("crop_size", "choice", 512, "aligned face size in pixels", "crop.crop_size",
            choices=CROP_SIZES, label="Crop size"),
    # --- paste back
    Control("mask", "choice", "auto", "paste mask: auto = face parsing if its weights are present, else the "
            "landmark face outline", "paste.mask", choices=MASK_KINDS, label="Mask"),
    Control("erode", "float", 8.0, "shrink the mask (pixels at 512 crop scale)", "paste.erode", 0.0, 128.0, 1.0),
    Control("feather", "float", 16.0, "soft edge width (pixels at 512 crop scale)", "paste.feather", 0.0, 128.0, 1.0),
    Control("protect_hair", "bool", False, "keep the original hair and hairline", "paste.protect_hair"),
    Control("visibility", "float", 1.0, "0 = original face, 1 = restored face", "paste.visibility", 0.0, 1.0, 0.05,
            label="Visibility"),
    Control("color_correction", "choice", "lab", "match the restored face's colours to the original: none, lab "
            "(mean/std in LAB) or lowfreq (keep the original's low frequencies)", "paste.color_correction",
            choices=COLOR_MODES, label="Colour correction"),
    # --- whole run
    Control("metric", "text", None, "NR-IQA metric: score the faces before and after restoration",
            "pipeline.metric", label="Quality metric"),
    Control("device", "text", "auto", "auto (the host's device, else cuda when available, else cpu) | cpu | "
            "cuda[:N]", "pipeline.device", label="Device"),
    Control("seed", "int", 0, "random seed (refine noise)", "pipeline.seed", 0, 0xFFFFFFFF, 1, label="Seed"),
    Control("allow_color", "bool", False, "let the restorer colour a grayscale (black-and-white) photo; off: a "
            "grayscale input comes back grayscale, only its luminance is restored", "pipeline.allow_color",
            label="Allow colour on grayscale photos"),
)

BY_NAME: dict[str, Control] = {c.name: c for c in CONTROLS}


def control(name: str) -> Control:
    return BY_NAME[name]


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


def _ranged(c: Control):
    def parse(text: str):
        try:
            return c.check(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    parse.__name__ = c.kind
    return parse


COMFY_TYPES = {"float": "FLOAT", "int": "INT", "bool": "BOOLEAN", "text": "STRING"}


def comfy_input(name: str, choices: Optional[list] = None, default: Any = None, tooltip: str = "") -> tuple:
    """ComfyUI INPUT_TYPES entry: ("FLOAT", {default, min, max, step, tooltip}) or ([choices], {default...}).
    ``choices``/``default`` override the table for lists only known at run time (weights files)."""
    c = BY_NAME[name]
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


__all__ = ["BY_NAME", "CONTROLS", "Control", "NONE_SPELLINGS", "is_none", "a1111_option", "add_argument", "comfy_input", "control",
           "gradio_kwargs", "split_values"]
