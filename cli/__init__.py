"""``python -m facerefine <command>``. With --json the last printed line is one JSON object.

Each command lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> dict``; modules import heavy libraries only inside ``run``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from ..errors import FaceRefineError

COMMANDS = {
    "models": ("models_cmd", "list, download and verify weights files"),
    "crop": ("crop_cmd", "detect and align faces, write the crops"),
    "score": ("score_cmd", "no-reference quality score of images or faces"),
    "restore": ("restore_cmd", "restore faces in images (crop -> lookup -> refine -> paste)"),
    "bench": ("bench_cmd", "per-stage timings and peak memory"),
    "eval": ("eval_cmd", "metrics table, comparison grid and plots"),
    "train": ("train_cmd", "train a model stage"),
    "app": ("app_cmd", "start the gradio app (127.0.0.1 by default)"),
}


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """`--help` shows each option's default, except where there is nothing to show (None, off flags)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or default is None or default is False or default in ([], "")
                or default is argparse.SUPPRESS or not action.option_strings or action.nargs == 0):
            return text
        return f"{text} (default: %(default)s)"


def _show_bare_defaults(parser: argparse.ArgumentParser) -> None:
    """Options declared without help text still list their default in --help."""
    for action in parser._actions:
        if (action.help is None and action.option_strings and action.nargs != 0
                and action.default is not None and action.default is not False
                and action.default not in ("", [], argparse.SUPPRESS)):
            action.help = "default: %(default)s"


def _command_module(name: str):
    return importlib.import_module(f".{COMMANDS[name][0]}", __name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m facerefine", description="FaceRefine blind face restoration")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        module = _command_module(name)  # light: commands import heavy libraries inside run()
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=DefaultsHelpFormatter)
        p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
        module.add_arguments(p)
        _show_bare_defaults(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    try:
        result = args._module.run(args)
    except FaceRefineError as err:
        return _fail(args, err)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", code=130)
    except ModuleNotFoundError as err:
        if not err.name or err.name.split(".")[0] in (__name__.split(".")[0], "facerefine"):
            raise  # one of our own modules: a bug, not a missing dependency
        return _fail(args, f"the '{args.command}' command needs the Python package '{err.name.split('.')[0]}', "
                           f"which is not installed (pip install {err.name.split('.')[0]}; see requirements.txt "
                           f"and pyproject.toml's optional extras)")
    except MemoryError as err:
        return _fail(args, f"out of memory: {err}. Try --device cpu, a smaller --batch or fewer faces.")
    except RuntimeError as err:
        if "out of memory" in str(err).lower():
            return _fail(args, f"out of memory: {err}. Try a smaller --batch or --device cpu.")
        raise
    if args.json:
        print(json.dumps(result if result is not None else {"ok": True}, default=_jsonable))
    return int((result or {}).get("exit_code", 0)) if isinstance(result, dict) else 0


def _fail(args, err, code: int = 1) -> int:
    print(f"error: {err}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"ok": False, "error": str(err)}))
    return code


def _jsonable(obj):
    try:
        import numpy as np
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:
        pass
    return str(obj)
