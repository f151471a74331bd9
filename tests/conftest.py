"""Shared test setup: never touch the network; real data is optional."""
import os
from pathlib import Path

import pytest

os.environ["FACEREFINE_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TORCH_HOME", str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "torch_home"))

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("FACEREFINE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Each test gets its own empty FACEREFINE_HOME."""
    monkeypatch.setenv("FACEREFINE_HOME", str(tmp_path / "facerefine_home"))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of small-model tests (opt in with usefixtures)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def london_dir():
    d = SHARED_DATA / "london"
    if not d.is_dir():
        pytest.skip("../shared/data/london not present")
    return d


@pytest.fixture
def utkface_dir():
    d = SHARED_DATA / "utkface"
    if not d.is_dir():
        pytest.skip("../shared/data/utkface not present")
    return d


def run_cli_json(capsys, *argv):
    """Run ``python -m facerefine ARGV --json`` in-process: (exit code, last JSON line, stderr)."""
    import json

    from facerefine.cli import main
    code = main([*map(str, argv), "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out.strip().splitlines()[-1]), captured.err
