"""Installer for AUTOMATIC1111 / Forge (run by the webui at every start) and ComfyUI-Manager (run as a script).

The host is never changed. Only requirements that are missing are added, and pip resolves each of them with
every installed distribution pinned to its installed version (a constraints file made from the environment),
so no dependency can upgrade, downgrade or remove a host package; if pip cannot, it adds nothing and the
line says so. A requirement that is installed at any version is accepted as the host has it. Optional
packages (pyiqa) are never installed into a host: one line says what is missing and how to get it.
torch / torchvision / torchaudio / xformers are never installed (the host owns them); inside a webui its
gradio is the webui's too.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements.txt"
HOST_OWNED = ("torch", "torchvision", "torchaudio", "xformers")
WEBUI_OWNED = HOST_OWNED + ("gradio", "gradio-client")
# Optional packages never installed into a host, only named when missing. pyiqa cannot be added to
# AUTOMATIC1111 1.10 without upgrading its transformers/numpy/pydantic, and in ComfyUI it adds ~57 packages
# (pytest, ruff, tensorboard, bitsandbytes, a second OpenCV build whose files replace the host's cv2).
OPTIONAL = {
    "pyiqa": ("pyiqa is not installed: its NR-IQA metrics (musiq, topiq_nr-face, ...; PolyForm-Noncommercial) "
              "are not available, the quality score uses the built-in face-iqa metric. To add them anyway: "
              "`pip install pyiqa` in this environment (it adds many packages and may change the host's)"),
}
PREFIX = "[FaceRefine]"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirements(path: Path) -> list[str]:
    """Requirement lines (comments, blanks and pip options dropped)."""
    if not path.is_file():
        return []
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")):
            lines.append(line)
    return lines


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed_packages() -> dict[str, str]:
    """canonical name -> version of every distribution Python sees (the first one found, as imports do)."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if name and dist.version and canonical(name) not in found:
            found[canonical(name)] = dist.version
    return found


def requirement_parts(line: str):
    """(name, specifier or None, marker applies) for one requirement line."""
    try:
        from packaging.requirements import Requirement
        req = Requirement(line)
        applies = req.marker is None or req.marker.evaluate()
        return req.name, (req.specifier if str(req.specifier) else None), applies
    except Exception:  # packaging missing or an unparsable line: the name only
        return re.split(r"[\s\[<>=!~;@]", line, maxsplit=1)[0], None, True


def plan(lines: list[str], is_installed=None, version_of=installed_version, host_owned=HOST_OWNED):
    """(lines to install, notes): only missing packages are listed; an installed package of another version
    than asked is kept as it is and noted. Host-owned packages are never listed."""
    todo, notes = [], []
    for line in lines:
        name, specifier, applies = requirement_parts(line)
        if not applies or canonical(name) in host_owned:
            continue
        version = version_of(name)
        if version is None and not (is_installed is not None and is_installed(name)):
            todo.append(line)
        elif specifier is not None and version is not None and not specifier.contains(version, prereleases=True):
            notes.append(f"keeping the host's {name} {version} (FaceRefine asks for {specifier}; "
                         f"features that need a newer {name} report it when used)")
    return todo, notes


def constraints_text(packages: dict[str, str]) -> str:
    """pip constraints pinning every installed package to its version (unparsable versions left out)."""
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:
        Version, InvalidVersion = str, ValueError
    pins = []
    for name, version in sorted(packages.items()):
        try:
            Version(version)
        except InvalidVersion:
            continue
        pins.append(f"{name}=={version}")
    return "\n".join(pins) + "\n"


def pip_install(line: str, constraints: str, launch=None) -> bool:
    """One pip install with the host pinned; True when it worked. Uses launch.run_pip inside a webui."""
    if launch is not None:
        try:
            launch.run_pip(f'install "{line}" -c "{constraints}"', f"FaceRefine requirement: {line}")
            return True
        except Exception:  # the webui raises RuntimeError with pip's whole output
            return False
    print(f"{PREFIX} pip install {line} (every installed package kept at its version)", flush=True)
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", line, "-c", constraints]
    return subprocess.call(cmd) == 0


def install(todo: list[str], launch=None) -> list[str]:
    """Install each line with the whole environment pinned; returns the lines pip could not add."""
    failed = []
    for line in todo:
        fd, constraints = tempfile.mkstemp(prefix="facerefine-constraints-", suffix=".txt")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(constraints_text(installed_packages()))  # again each time: earlier lines added packages
            if not pip_install(line, constraints, launch):
                failed.append(line)
        finally:
            os.unlink(constraints)
    return failed


def changed_packages(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Packages whose version changed or that disappeared (added ones are allowed)."""
    return [f"{n} {v} -> {after.get(n, 'removed')}" for n, v in sorted(before.items()) if after.get(n) != v]


def _webui_launch():
    """The webui's `launch` module when running inside A1111/Forge, else None."""
    try:
        import launch  # noqa: F401  (A1111/Forge put it on the path for extension installers)
    except Exception:
        return None
    return launch if hasattr(launch, "run_pip") and hasattr(launch, "is_installed") else None


def main() -> int:
    launch = _webui_launch()
    required = parse_requirements(REQUIREMENTS)
    if not required:
        print(f"{PREFIX} no {REQUIREMENTS.name} found; nothing to install")
        return 0
    before = installed_packages()
    todo, notes = plan(required, is_installed=launch.is_installed if launch else None,
                       host_owned=WEBUI_OWNED if launch else HOST_OWNED)
    notes += [line for name, line in OPTIONAL.items() if canonical(name) not in before]
    for note in notes:
        print(f"{PREFIX} {note}")
    if not todo:
        print(f"{PREFIX} all requirements already installed")
        return 0
    print(f"{PREFIX} adding missing packages without changing installed ones: {', '.join(todo)}")
    failed = install(todo, launch)
    changed = changed_packages(before, installed_packages())
    if changed:  # pip's constraints make this impossible; say so loudly if it ever happens
        print(f"{PREFIX} WARNING: installed packages changed: {', '.join(changed)}")
    if failed:
        print(f"{PREFIX} could not add {', '.join(failed)} without changing this host's packages; FaceRefine "
              f"needs them: install versions that fit this environment by hand (pip install NAME==VERSION)")
    return 1 if failed or changed else 0


if __name__ == "__main__":  # webui extension installer and ComfyUI-Manager run this file as a script
    sys.exit(main())
elif __name__ == "builtins":  # very old webuis exec() the file; never exit their process
    main()
