"""FaceRefine inside a real ComfyUI 0.3.75 server (see tests/comfy_engine.py).

One server per test run. Every example workflow (UI format, as the template browser
loads it) is converted to the API format and submitted through /prompt; outputs are
read back from /history and checked.
"""
import json
from pathlib import Path

import pytest

import comfy_engine

pytestmark = [pytest.mark.engine]

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))
PACK = comfy_engine.PACK_FOLDER_NAME


@pytest.fixture(scope="module")
def server():
    return comfy_engine.get_server()


@pytest.fixture(scope="module")
def object_info(server):
    return server.object_info()


@pytest.fixture(scope="module")
def our_nodes(object_info):
    nodes = {k: v for k, v in object_info.items() if v.get("python_module", "").endswith(PACK)}
    assert nodes, "no FaceRefine node registered in ComfyUI"
    return nodes


def test_pack_loads_without_import_errors(server, our_nodes):
    log = server.log_tail(200_000)
    for line in log.splitlines():
        assert not ("Cannot import" in line and PACK in line), line
    assert "FaceRefine: could not load" not in log, log


def test_every_node_is_documented(our_nodes):
    for name, info in our_nodes.items():
        assert info["category"].startswith("FaceRefine"), (name, info["category"])
        assert info["display_name"].startswith("FaceRefine "), (name, info["display_name"])
        assert len(info.get("description", "")) > 20, f"{name} has no description"
        for section in ("required", "optional"):
            for inp, spec in (info["input"].get(section) or {}).items():
                opts = spec[1] if len(spec) > 1 else {}
                assert opts.get("tooltip"), f"{name}.{inp} has no tooltip"


def test_web_extension_and_templates_are_served(server):
    assert f"/extensions/{PACK}/facerefine.js" in server.get("/extensions")
    listed = server.get("/workflow_templates").get(PACK, [])
    assert sorted(listed) == sorted(p.stem for p in WORKFLOWS)
    for p in WORKFLOWS:
        served = server.get(f"/api/workflow_templates/{PACK}/{p.name}")
        assert served == json.loads(p.read_text())


def test_weights_in_comfy_model_folders_appear_in_dropdowns(server):
    """models/facerestore_models (shared with facerestore_cf/ReActor) is registered with folder_paths."""
    from tiny_models import make_tiny_iqpfr
    make_tiny_iqpfr(server.models / "facerestore_models" / "my_own_restorer.safetensors")
    (server.models / "facerestore_models" / "notes.txt").write_text("not weights")
    for node, inp in (("FaceRefineRestorerLoader", "restorer_name"), ("FaceRefineRestore", "restorer")):
        choices = server.object_info(node)[node]["input"]["required"][inp][0]
        assert "my_own_restorer.safetensors" in choices, choices
        assert "notes.txt" not in choices
        assert "mtcnn.safetensors" not in choices  # embedded detector weights are not restorers
    kinds = server.get("/models")  # ComfyUI's model folder kinds
    assert {"facerestore_models", "facerefine", "facedetection"} <= set(kinds), kinds
