"""Restorer loader + Codebook Lookup nodes (called directly, outside ComfyUI) and the restore CLI."""
import json

import pytest
import torch

from tiny_models import make_tiny_iqpfr

from test_lookup_iqpfr import FAST, make_crops

from facerefine.core.lookup.options import LookupOptions


# one torch thread: small ops on a shared CPU are faster without OpenMP spin-waits
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def models_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    make_tiny_iqpfr(home / "facerestore_models" / "tiny_iqpfr.safetensors", **FAST)
    monkeypatch.setenv("FACEREFINE_HOME", str(home))
    return home


def test_loader_lists_the_folder_and_loads(models_home):
    from facerefine.nodes.loader_nodes import NODES, FaceRefineRestorerLoader
    assert "FaceRefineRestorerLoader" in NODES
    names = FaceRefineRestorerLoader.INPUT_TYPES()["required"]["restorer_name"][0]
    assert "tiny_iqpfr.safetensors" in names and "codeformer.pth" in names  # present file + registry entries
    (restorer,) = FaceRefineRestorerLoader().load("tiny_iqpfr.safetensors")
    assert restorer.architecture == "IQPFR"
    assert FaceRefineRestorerLoader.RETURN_TYPES == ("FACEREFINE_RESTORER",)


def test_lookup_node_batches_like_the_core_function(models_home):
    from facerefine.core.lookup.lookup import lookup
    from facerefine.models.restorers import load_restorer
    from facerefine.nodes.loader_nodes import FaceRefineRestorerLoader
    from facerefine.nodes.lookup_nodes import FaceRefineCodebookLookup
    (restorer,) = FaceRefineRestorerLoader().load("tiny_iqpfr.safetensors")
    crops = make_crops(3, seed=11)
    node = FaceRefineCodebookLookup()
    result = node.lookup(crops, restorer, quality=0.4, fidelity=0.5, mode="trained", device="cpu", face_batch=2)
    out, latent = result["result"] if isinstance(result, dict) else result
    ref, ref_latent = lookup(crops, load_restorer(str(models_home / "facerestore_models" / "tiny_iqpfr.safetensors")),
                             LookupOptions(quality=0.4, fidelity=0.5, mode="trained"))
    torch.testing.assert_close(out.crops, ref.crops, atol=1e-5, rtol=0)
    assert torch.equal(latent.indices, ref_latent.indices) and len(latent) == 3
    assert set(latent.skip_features) == set(ref_latent.skip_features)
    assert latent.skip_features["32"].shape[0] == 3 and latent.lq_crops.shape[0] == 3
    assert "GFPGAN" in FaceRefineCodebookLookup.DESCRIPTION and "base output" in FaceRefineCodebookLookup.DESCRIPTION


def test_lookup_node_user_error_for_trained_mode_on_plain_model(models_home):
    from facerefine.errors import FaceRefineError
    from facerefine.nodes.lookup_nodes import FaceRefineCodebookLookup

    class PlainCodeFormer:  # handle stand-in: has no conditioning weights
        pass
    from facerefine.models.restorers import RESTORERS, load_restorer
    r = load_restorer(str(models_home / "facerestore_models" / "tiny_iqpfr.safetensors"))
    r.arch = next(a for a in RESTORERS if a.id == "CodeFormer")
    r.codebook.quality_condition = None
    with pytest.raises(FaceRefineError, match="conditioning"):
        FaceRefineCodebookLookup().lookup(make_crops(1), r, mode="trained", device="cpu")


def test_restore_cli_on_a_london_face(london_dir, models_home, tmp_path, capsys):
    from facerefine.cli import main
    image = sorted(london_dir.glob("neutral/*.jpg"))[0]
    out = tmp_path / "out.png"
    code = main(["restore", str(image), "-o", str(out), "--restorer",
                 str(models_home / "facerestore_models" / "tiny_iqpfr.safetensors"), "--quality", "0.8",
                 "--fidelity", "0.5", "--device", "cpu", "--json"])
    assert code == 0 and out.is_file()
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["faces"] == 1
    # a random tiny model draws no detail: exemplar detail fills it in
    assert result["results"][0]["history"] == ["crop", "lookup:IQPFR:trained", "exemplar-detail"]
    assert "lookup" in result["timings"]
