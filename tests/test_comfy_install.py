"""Installing the pack into a real ComfyUI environment changes none of ComfyUI's packages.

A fresh virtual environment gets ComfyUI 0.3.75's own requirements (the engine of tests/comfy_engine.py), with
this environment's torch + torchvision lent through a .pth file instead of a second multi-GB copy. Then it
does what ComfyUI-Manager does for a node pack: `pip install <line>` for each requirements.txt line that is not
installed, then `python install.py`. `pip freeze --all` before and after may differ only by added packages.
Skips when the engine or the registry is unavailable, unless FACEREFINE_REQUIRE_COMFY=1 (CI).
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_engine  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.engine]


def distribution_closure(*names: str) -> list[importlib.metadata.Distribution]:
    """The installed distributions of names and everything they require (markers that apply only)."""
    from packaging.requirements import Requirement
    seen, todo, found = set(), list(names), []
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(dist)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return found


def lend_torch(site_packages: Path, folder: Path) -> None:
    """Links to this environment's torch stack in folder, put on the new venv's path by a .pth file."""
    folder.mkdir()
    for dist in distribution_closure("torch", "torchvision"):
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source = Path(dist.locate_file(top))
            if source.exists() and not (folder / top).exists():
                (folder / top).symlink_to(source)
    (site_packages / "_facerefine_test_torch.pth").write_text(str(folder) + "\n")


def pip(python: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args], capture_output=True,
                          text=True, timeout=timeout)


def freeze(python: Path) -> dict[str, str]:
    lines = pip(python, "freeze", "--all").stdout.splitlines()
    return dict(line.split("==", 1) for line in lines if "==" in line)


def unavailable(reason: str):
    if os.environ.get("FACEREFINE_REQUIRE_COMFY") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def test_installing_the_pack_changes_no_comfyui_package(tmp_path):
    try:
        engine = comfy_engine.extract_engine()
    except comfy_engine.EngineUnavailable as err:
        unavailable(str(err))
    venv = tmp_path / "comfy-venv"
    subprocess.run([sys.base_prefix + "/bin/python3", "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    lend_torch(site, tmp_path / "torch-stack")
    comfy_lines = [line.split("#", 1)[0].strip() for line in (engine / "requirements.txt").read_text().splitlines()]
    comfy_lines = [line for line in comfy_lines if line and re.split(r"[<>=!~;\[ ]", line)[0].lower()
                   not in comfy_engine.SKIP_REQUIREMENTS]
    proc = pip(python, "install", "-q", *comfy_lines)
    if proc.returncode != 0:
        unavailable(f"ComfyUI's requirements did not install: {proc.stderr[-2000:]}")
    before = freeze(python)
    assert "torch" in before and "numpy" in before

    pack = tmp_path / "custom_nodes" / "comfyui-facerefine"  # what ComfyUI-Manager clones
    pack.mkdir(parents=True)
    for name in ("install.py", "requirements.txt"):
        shutil.copy2(REPO / name, pack / name)
    log = []
    for line in (pack / "requirements.txt").read_text().splitlines():  # ComfyUI-Manager: one pip call a line,
        line = line.split("#", 1)[0].strip()                          # skipping what is installed
        if not line:
            continue
        name = re.split(r"[<>=!~;\[ ]", line)[0]
        if subprocess.run([str(python), "-c", f"import importlib.metadata as m; m.version({name!r})"],
                          capture_output=True).returncode == 0:
            continue
        proc = pip(python, "install", line)
        log.append(f"pip install {line}: {proc.returncode}\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}")
        assert proc.returncode == 0, log[-1]
    proc = subprocess.run([str(python), "install.py"], cwd=pack, capture_output=True, text=True, timeout=1800)
    log.append(proc.stdout + proc.stderr)
    after = freeze(python)
    changed = [f"{n} {v} -> {after.get(n, 'removed')}" for n, v in sorted(before.items()) if after.get(n) != v]
    assert changed == [], "\n".join(log)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print("added:", sorted(set(after) - set(before)))
    # the pack's runtime imports in that environment
    check = subprocess.run([str(python), "-c", "import cv2, facexlib, spandrel, spandrel_extra_arches, kornia, "
                            "safetensors; print('ok')"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr[-2000:]
