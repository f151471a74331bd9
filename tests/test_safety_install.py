"""Issue 16, item 13: a quiet install and quiet runs, with progress during the first set-up."""
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_package_data_lives_in_listed_packages():
    """setuptools warns "Package would be ignored" for data folders that are not packages: every folder
    holding package data must be listed in `packages` (and exist)."""
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = set(cfg["packages"])
    for package, patterns in cfg["package-data"].items():
        assert package in packages, package
        folder = REPO / Path(*package.split(".")[1:])
        assert folder.is_dir(), folder
        for pattern in patterns:
            assert "/" not in pattern, f"{package}: {pattern} reaches into a sub-folder that is not a package"
            assert list(folder.glob(pattern)), f"{package}: nothing matches {pattern}"
    for package in packages:
        assert (REPO / Path(*package.split(".")[1:])).is_dir(), package


_CHILD = r"""
import json, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from facerefine.models.spandrel_loader import install_extra_arches
    install_extra_arches()
    from facerefine.models.arch.iqpfr import spandrel_codeformer_blocks
    spandrel_codeformer_blocks()
print(json.dumps([str(w.message) for w in caught if "jit" in str(w.message)]))
"""


def test_no_torch_jit_future_warning_when_restorers_load():
    env = {**os.environ, "FACEREFINE_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env,
                         cwd=REPO.parent, timeout=1200)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_run_sh_shows_progress_during_first_setup(tmp_path):
    """run.sh's real set-up path against a stand-in interpreter that records what it is asked to do."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "calls.log"
    fake = venv / "bin" / "python"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\nexit 0\n")
    fake.chmod(0o755)
    env = {**os.environ, "FACEREFINE_VENV": str(venv)}
    out = subprocess.run(["bash", str(REPO / "run.sh"), "models", "list"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("run.sh: ")]
    assert any("[2/4]" in line for line in lines) and any("[4/4]" in line for line in lines), out.stderr
    assert lines[-1] == "run.sh: set-up done"
    calls = log.read_text()
    assert "-m pip install" in calls and "-m facerefine models list" in calls
    # the second start is silent: the stamp says the set-up is current
    again = subprocess.run(["bash", str(REPO / "run.sh"), "models", "list"], capture_output=True, text=True,
                           env=env, timeout=120)
    assert again.returncode == 0 and "run.sh: " not in again.stderr
