"""install.py decisions (A1111/Forge with `launch` stubbed, and plain pip for ComfyUI-Manager).

The real proof is tests/test_a1111_real_webui.py (a real webui's launcher runs install.py); these cover the
decisions one by one: only missing packages are added, with every installed package pinned; an installed
package of another version is kept; optional packages (pyiqa) are named, never installed.
"""
import importlib.metadata
import importlib.util
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def load_installer(monkeypatch, tmp_path, requirements: Path | None = None, optional=None):
    spec = importlib.util.spec_from_file_location("facerefine_install_under_test", REPO / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # must not run main() on import
    if requirements is not None:
        monkeypatch.setattr(module, "REQUIREMENTS", requirements)
    if optional is not None:
        monkeypatch.setattr(module, "OPTIONAL", optional)
    return module


class FakeLaunch(types.ModuleType):
    """The webui's launch module: is_installed + run_pip (which raises on pip failure)."""

    def __init__(self, installed=(), fail=()):
        super().__init__("launch")
        self.installed, self.fail, self.calls, self.constraints = set(installed), set(fail), [], []

    def is_installed(self, package):
        return package in self.installed

    def run_pip(self, command, desc=None, live=True):
        self.calls.append(command)
        if "-c " in command:
            self.constraints.append(Path(command.split('-c "', 1)[1].rstrip('"')).read_text())
        if any(name in command for name in self.fail):
            raise RuntimeError(f"Couldn't install {desc}.\nCommand: pip {command}\nError code: 1")
        return ""


def write_requirements(tmp_path, *lines) -> Path:
    path = tmp_path / "requirements.txt"
    path.write_text("# comment\n\n" + "\n".join(lines) + "\n--extra-index-url https://example.invalid\n")
    return path


def test_plan_adds_only_missing_packages_and_never_torch(monkeypatch, tmp_path):
    installer = load_installer(monkeypatch, tmp_path)
    versions = {"numpy": "2.0.0", "gradio": "6.0.0", "torch": "1.0", "torchvision": None, "spandrel": "0.3.4"}
    todo, notes = installer.plan(
        ["numpy>=1.20", "torch>=2.5", "torchvision", "TorchAudio==2.0", "xformers", "brand-new-pkg==1.2",
         "gradio>=99", "spandrel>=0.4.0", "oldpython-only; python_version < '3.0'"],
        version_of=lambda name: versions.get(name.lower()))
    assert todo == ["brand-new-pkg==1.2"]
    # an installed package of another version is kept as the host has it, and said
    assert len(notes) == 2 and "gradio 6.0.0" in notes[0] and "spandrel 0.3.4" in notes[1]


def test_plan_uses_webui_is_installed_for_packages_without_metadata(monkeypatch, tmp_path):
    installer = load_installer(monkeypatch, tmp_path)
    todo, _ = installer.plan(["vendored-thing", "absent-thing"], is_installed=lambda n: n == "vendored-thing",
                             version_of=lambda n: None)
    assert todo == ["absent-thing"]


def test_constraints_pin_every_installed_package(monkeypatch, tmp_path):
    installer = load_installer(monkeypatch, tmp_path)
    text = installer.constraints_text(installer.installed_packages())
    for name in ("numpy", "torch", "pytest", "safetensors"):
        assert f"{name}=={importlib.metadata.version(name)}" in text.splitlines()
    assert installer.constraints_text({"odd": "not a version", "ok": "1.0"}) == "ok==1.0\n"


def test_inside_webui_uses_launch_run_pip_with_the_whole_host_pinned(monkeypatch, tmp_path):
    req = write_requirements(tmp_path, "numpy", "torch>=99", "facerefine-test-missing-pkg>=1.0")
    installer = load_installer(monkeypatch, tmp_path, req, optional={})
    fake = FakeLaunch()
    monkeypatch.setitem(sys.modules, "launch", fake)
    calls = []
    monkeypatch.setattr(installer.subprocess, "call", lambda *a, **k: calls.append(a) or 0)
    assert installer.main() == 0
    assert len(fake.calls) == 1, fake.calls
    assert fake.calls[0].startswith('install "facerefine-test-missing-pkg>=1.0" -c ')
    assert not calls, "plain pip must not run inside the webui"
    pins = fake.constraints[0].splitlines()
    for name in ("torch", "numpy", "gradio", "pytest"):
        assert f"{name}=={importlib.metadata.version(name)}" in pins
    assert not list(Path(tempfile_dir()).glob("facerefine-constraints-*"))


def tempfile_dir():
    import tempfile
    return tempfile.gettempdir()


def test_inside_webui_gradio_belongs_to_the_webui(monkeypatch, tmp_path):
    """A1111 pins gradio 3.x and Forge 4.x: even a missing gradio is not installed into a webui."""
    installer = load_installer(monkeypatch, tmp_path, write_requirements(tmp_path, "gradio", "f-test-missing-d"),
                               optional={})
    monkeypatch.setattr(installer, "installed_version", lambda n: None)
    fake = FakeLaunch()
    monkeypatch.setitem(sys.modules, "launch", fake)
    assert installer.main() == 0
    assert [c.split('"')[1] for c in fake.calls] == ["f-test-missing-d"]


def test_nothing_to_do(monkeypatch, tmp_path, capsys):
    installer = load_installer(monkeypatch, tmp_path, write_requirements(tmp_path, "numpy", "pytest>=9999"),
                               optional={})
    fake = FakeLaunch()
    monkeypatch.setitem(sys.modules, "launch", fake)
    assert installer.main() == 0
    assert fake.calls == []
    out = capsys.readouterr().out
    assert "already installed" in out and "keeping the host's pytest" in out


def test_required_pip_failure_is_reported_not_raised(monkeypatch, tmp_path, capsys):
    req = write_requirements(tmp_path, "facerefine-test-missing-a", "facerefine-test-missing-b")
    installer = load_installer(monkeypatch, tmp_path, req, optional={})
    fake = FakeLaunch(fail={"facerefine-test-missing-a"})
    monkeypatch.setitem(sys.modules, "launch", fake)
    assert installer.main() == 1
    assert len(fake.calls) == 2  # the second package is still tried
    assert "could not add facerefine-test-missing-a without changing" in capsys.readouterr().out


def test_optional_packages_are_named_never_installed(monkeypatch, tmp_path, capsys):
    optional = {"f-test-optional": "f-test-optional is not installed: the metric is not available"}
    installer = load_installer(monkeypatch, tmp_path, write_requirements(tmp_path, "numpy"), optional=optional)
    fake = FakeLaunch()
    monkeypatch.setitem(sys.modules, "launch", fake)
    assert installer.main() == 0
    assert fake.calls == []
    lines = [l for l in capsys.readouterr().out.splitlines() if "f-test-optional" in l]
    assert lines == ["[FaceRefine] f-test-optional is not installed: the metric is not available"]
    real = load_installer(monkeypatch, tmp_path)
    assert "pyiqa" in real.OPTIONAL and "pip install pyiqa" in real.OPTIONAL["pyiqa"]


def test_outside_webui_uses_pip_subprocess_with_the_host_pinned(monkeypatch, tmp_path):
    installer = load_installer(monkeypatch, tmp_path, write_requirements(tmp_path, "numpy", "f-test-missing-c"),
                               optional={})
    monkeypatch.setitem(sys.modules, "launch", None)  # `import launch` fails, as outside the webui
    calls = []

    def fake_call(cmd, *a, **k):
        calls.append((cmd, Path(cmd[cmd.index("-c") + 1]).read_text()))
        return 0

    monkeypatch.setattr(installer.subprocess, "call", fake_call)
    assert installer.main() == 0
    assert len(calls) == 1
    cmd, constraints = calls[0]
    assert cmd[:3] == [sys.executable, "-m", "pip"] and "f-test-missing-c" in cmd
    assert f"numpy=={importlib.metadata.version('numpy')}" in constraints.splitlines()
    assert f"torch=={importlib.metadata.version('torch')}" in constraints.splitlines()


def test_missing_requirements_file_is_not_an_error(monkeypatch, tmp_path, capsys):
    installer = load_installer(monkeypatch, tmp_path, tmp_path / "nope.txt")
    monkeypatch.setitem(sys.modules, "launch", None)
    assert installer.main() == 0
    assert "nothing to install" in capsys.readouterr().out


def test_project_requirements_are_what_a_host_needs(monkeypatch, tmp_path):
    """No torch, no gradio (the webui's), no pyiqa (optional, non-commercial, and it upgrades hosts)."""
    req = REPO / "requirements.txt"
    installer = load_installer(monkeypatch, tmp_path, req)
    lines = installer.parse_requirements(req)
    assert lines, "requirements.txt has no requirements"
    names = {installer.canonical(installer.requirement_parts(l)[0]) for l in lines}
    assert not names & set(installer.HOST_OWNED)
    assert not names & {"gradio", "pyiqa"}
    # no lower bound a host could fail: the host's installed version is accepted as it is
    assert all(installer.requirement_parts(l)[1] is None for l in lines), lines


def test_pyproject_dependencies_match_requirements_and_registry_metadata(monkeypatch, tmp_path):
    """The Comfy Registry reads pyproject.toml: the same host needs as requirements.txt, and its metadata."""
    import tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    installer = load_installer(monkeypatch, tmp_path)
    names = lambda lines: sorted(installer.canonical(installer.requirement_parts(l)[0]) for l in lines)  # noqa: E731
    assert names(project["project"]["dependencies"]) == names(installer.parse_requirements(REPO / "requirements.txt"))
    comfy = project["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] == "FaceRefine"
    assert comfy["Icon"].endswith("web/icon.svg") and (REPO / "web" / "icon.svg").is_file()
    assert project["project"]["urls"]["Repository"]
    assert {"gradio", "pyiqa"} <= set(project["project"]["optional-dependencies"]["standalone"])
