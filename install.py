"""Installer for AUTOMATIC1111 / Forge (run by the webui) and ComfyUI-Manager (run as a script).

Installs only the requirements.txt entries that are missing or whose installed version does not
satisfy the requirement. torch / torchvision / torchaudio belong to the host: they are never
installed, and pip is pinned to the host's versions so no dependency can replace them. Inside the
webui, gradio belongs to the webui too (A1111 pins 3.x, Forge 4.x): it is left alone and pinned.
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
# The webui pins its own gradio (A1111: 3.x, Forge: 4.x); ours is only for the standalone app.
WEBUI_OWNED = HOST_OWNED + ("gradio", "gradio-client")


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


def requirement_parts(line: str):
    """(name, specifier or None, marker applies) for one requirement line."""
    try:
        from packaging.requirements import Requirement
        req = Requirement(line)
        applies = req.marker is None or req.marker.evaluate()
        return req.name, (req.specifier if str(req.specifier) else None), applies
    except ImportError:  # packaging missing: name only
        name = re.split(r"[\s\[<>=!~;@]", line, maxsplit=1)[0]
        return name, None, True
    except Exception:  # unparsable line (e.g. a URL): let pip handle it if the name looks absent
        name = re.split(r"[\s\[<>=!~;@]", line, maxsplit=1)[0]
        return name, None, True


def plan(lines: list[str], is_installed=None, version_of=installed_version, host_owned=HOST_OWNED) -> list[str]:
    """The requirement lines that need installing. Host-owned packages are never listed."""
    todo = []
    for line in lines:
        name, specifier, applies = requirement_parts(line)
        if not applies or canonical(name) in host_owned:
            continue
        version = version_of(name)
        present = version is not None or (is_installed is not None and is_installed(name))
        if not present:
            todo.append(line)
        elif specifier is not None and version is not None and not specifier.contains(version, prereleases=True):
            todo.append(line)
    return todo


def host_pins(host_owned=HOST_OWNED) -> list[str]:
    """pip constraints that keep the host's torch stack (and the webui's gradio) exactly as they are."""
    return [f"{name}=={v}" for name in host_owned if (v := installed_version(name))]


def _constraints_file(host_owned=HOST_OWNED) -> str | None:
    pins = host_pins(host_owned)
    if not pins:
        return None
    fd, path = tempfile.mkstemp(prefix="facerefine-constraints-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(pins) + "\n")
    return path


def install(todo: list[str], launch=None) -> list[str]:
    """Install each line; returns the lines that failed. Uses launch.run_pip inside A1111/Forge."""
    failed = []
    constraints = _constraints_file(WEBUI_OWNED if launch is not None else HOST_OWNED)
    try:
        for line in todo:
            if launch is not None:
                extra = f' -c "{constraints}"' if constraints else ""
                try:
                    launch.run_pip(f'install "{line}"{extra}', f"FaceRefine requirement: {line}")
                except Exception as err:  # the webui raises RuntimeError with pip's output
                    print(f"[FaceRefine] {err}")
                    failed.append(line)
            else:
                cmd = [sys.executable, "-m", "pip", "install", line]
                if constraints:
                    cmd += ["-c", constraints]
                print(f"[FaceRefine] pip install {line}", flush=True)
                if subprocess.call(cmd) != 0:
                    failed.append(line)
    finally:
        if constraints:
            os.unlink(constraints)
    return failed


def _webui_launch():
    """The webui's `launch` module when running inside A1111/Forge, else None."""
    try:
        import launch  # noqa: F401  (A1111/Forge put it on the path for extension installers)
    except Exception:
        return None
    return launch if hasattr(launch, "run_pip") and hasattr(launch, "is_installed") else None


def main() -> int:
    launch = _webui_launch()
    lines = parse_requirements(REQUIREMENTS)
    if not lines:
        print(f"[FaceRefine] no {REQUIREMENTS.name} found; nothing to install")
        return 0
    todo = plan(lines, is_installed=launch.is_installed if launch else None,
                host_owned=WEBUI_OWNED if launch else HOST_OWNED)
    if not todo:
        print("[FaceRefine] all requirements already installed")
        return 0
    print(f"[FaceRefine] installing: {', '.join(todo)}")
    failed = install(todo, launch)
    if failed:
        print(f"[FaceRefine] could not install: {', '.join(failed)}. Install them by hand with pip.")
        return 1
    return 0


if __name__ == "__main__":  # webui extension installer and ComfyUI-Manager run this file as a script
    sys.exit(main())
elif __name__ == "builtins":  # very old webuis exec() the file; never exit their process
    main()
