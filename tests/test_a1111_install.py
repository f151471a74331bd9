"""install.py decisions (A1111/Forge with `launch` stubbed, and plain pip for ComfyUI-Manager)."""
import importlib.metadata
import importlib.util
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def load_installer(monkeypatch, requirements: Path | None = None):
    spec = importlib.util.spec_from_file_location("facerefine_install_under_test", REPO / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # must not run main() on import
    if requirements is not None:
        monkeypatch.setattr(module, "REQUIREMENTS", requirements)
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


def test_plan_lists_only_missing_or_outdated_and_never_torch(monkeypatch):
    installer = load_installer(monkeypatch)
    versions = {"numpy": "2.0.0", "gradio": "6.0.0", "torch": "1.0", "torchvision": None}
    todo = installer.plan(
        ["numpy>=1.20", "torch>=2.5", "torchvision", "TorchAudio==2.0", "xformers", "brand-new-pkg==1.2", "gradio>=99",
         "oldpython-only; python_version < '3.0'"],
        version_of=lambda name: versions.get(name.lower()))
    assert todo == ["brand-new-pkg==1.2", "gradio>=99"]


def test_plan_uses_webui_is_installed_for_packages_without_metadata(monkeypatch):
    installer = load_installer(monkeypatch)
    todo = installer.plan(["vendored-thing", "absent-thing"], is_installed=lambda n: n == "vendored-thing",
                          version_of=lambda n: None)
    assert todo == ["absent-thing"]


def test_inside_webui_uses_launch_run_pip_with_torch_pinned(monkeypatch, tmp_path, capsys):
    req = write_requirements(tmp_path, "numpy", "torch>=99", "facerefine-test-missing-pkg>=1.0")
    installer = load_installer(monkeypatch, req)
    fake = FakeLaunch()
    monkeypatch.setitem(sys.modules, "launch", fake)
    calls = []
    monkeypatch.setattr(installer.subprocess, "call", lambda *a, **k: calls.append(a) or 0)
    assert installer.main() == 0
    assert fake.calls and len(fake.calls) == 1, fake.calls
    assert fake.calls[0].startswith('install "facerefine-test-missing-pkg>=1.0"')
    assert not calls, "plain pip must not run inside the webui"
    torch_version = importlib.metadata.version("torch")
    assert f"torch=={torch_version}" in fake.constraints[0]
    assert "torch>=99" not in " ".join(fake.calls)


def test_inside_webui_gradio_belongs_to_the_webui(monkeypatch, tmp_path):
    """A1111 pins gradio 3.x and Forge 4.x: a `gradio>=5` requirement must not upgrade it there."""
    installer = load_installer(monkeypatch, write_requirements(tmp_path, "gradio>=999", "facerefine-test-missing-d"))
    fake = FakeLaunch()
    monkeypatch.setitem(sys.modules, "launch", fake)
    assert installer.main() == 0
    assert [c.split('"')[1] for c in fake.calls] == ["facerefine-test-missing-d"]
    assert f"gradio=={importlib.metadata.version('gradio')}" in fake.constraints[0]
    # outside the webui (ComfyUI-Manager, standalone) the same line is installed
    assert installer.plan(["gradio>=999"]) == ["gradio>=999"]


def test_inside_webui_nothing_to_do(monkeypatch, tmp_path, capsys):
    installer = load_installer(monkeypatch, write_requirements(tmp_path, "numpy", "pytest"))
    fake = FakeLaunch()
    monkeypatch.setitem(sys.modules, "launch", fake)
    assert installer.main() == 0
    assert fake.calls == []
    assert "already installed" in capsys.readouterr().out


def test_webui_pip_failure_is_reported_not_raised(monkeypatch, tmp_path, capsys):
    req = write_requirements(tmp_path, "facerefine-test-missing-a", "facerefine-test-missing-b")
    installer = load_installer(monkeypatch, req)
    fake = FakeLaunch(fail={"facerefine-test-missing-a"})
    monkeypatch.setitem(sys.modules, "launch", fake)
    assert installer.main() == 1
    assert len(fake.calls) == 2  # the second package is still tried
    out = capsys.readouterr().out
    assert "could not install: facerefine-test-missing-a" in out


def test_outside_webui_uses_pip_subprocess(monkeypatch, tmp_path):
    installer = load_installer(monkeypatch, write_requirements(tmp_path, "numpy", "facerefine-test-missing-c"))
    monkeypatch.setitem(sys.modules, "launch", None)  # `import launch` fails, as outside the webui
    calls = []

    def fake_call(cmd, *a, **k):
        calls.append((cmd, Path(cmd[cmd.index("-c") + 1]).read_text() if "-c" in cmd else ""))
        return 0

    monkeypatch.setattr(installer.subprocess, "call", fake_call)
    assert installer.main() == 0
    assert len(calls) == 1
    cmd, constraints = calls[0]
    assert cmd[:5] == [sys.executable, "-m", "pip", "install", "facerefine-test-missing-c"]
    assert "torch==" in constraints and "torchvision==" in constraints


def test_missing_requirements_file_is_not_an_error(monkeypatch, tmp_path, capsys):
    installer = load_installer(monkeypatch, tmp_path / "nope.txt")
    monkeypatch.setitem(sys.modules, "launch", None)
    assert installer.main() == 0
    assert "nothing to install" in capsys.readouterr().out


def test_project_requirements_never_install_torch(monkeypatch):
    req = REPO / "requirements.txt"
    if not req.is_file():
        pytest.skip("requirements.txt not written yet")
    installer = load_installer(monkeypatch, req)
    lines = installer.parse_requirements(req)
    assert lines, "requirements.txt has no requirements"
    todo = installer.plan(lines, version_of=lambda name: None)  # as if nothing were installed
    names = {installer.canonical(installer.requirement_parts(l)[0]) for l in todo}
    assert not names & set(installer.HOST_OWNED)
