"""CPU smoke tests of the four training stages: a few steps on a handful of faces, the loss on a fixed
probe batch goes down, checkpoints resume exactly, and the exported safetensors load."""
import json

import numpy as np
import pytest
import torch

from facerefine.lab.train.runner import canonical_stage, load_config, train_stage
from facerefine.errors import FaceRefineError

TINY_MODEL = {"nf": 32, "ch_mult": [1, 2], "res_blocks": 1, "emb_dim": 16, "codebook_size": 32,
              "dim_embd": 32, "n_head": 4, "n_layers": 1, "connect_list": ["32"], "quality_hidden": 16}


def _faces(shared_data, n=4, size=32):
    """A handful of real faces when ../shared/data is present, else smooth synthetic 'faces'."""
    from facerefine.lab.train.data import align_face
    utk = shared_data / "utkface"
    if utk.is_dir():
        files = sorted(utk.iterdir())[:n]
        return np.stack([align_face(p, size) for p in files])
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    out = []
    for _ in range(n):
        c = torch.rand(3, 1, 1, generator=g)
        face = ((xx / 0.6) ** 2 + (yy / 0.8) ** 2 < 1).float()
        img = 0.2 + 0.6 * c * face + 0.1 * torch.sin(6 * xx + 4 * yy)
        out.append((img.clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy())
    return np.stack(out)


def _config(tmp_path):
    return {"resolution": 32, "out_dir": str(tmp_path / "run"), "iqa_metric": "none", "model": TINY_MODEL,
            "degrade": {"downscale": [1.0, 4.0]},
            "prior": {"hidden": 32, "depth": 1, "heads": 2},
            "train": {"batch_size": 4, "log_every": 1, "checkpoint_every": 100, "seed": 0},
            "stages": {"vqgan": {"lr": 2e-3}, "lookup": {"lr": 2e-3}, "prior": {"lr": 2e-3},
                       "identity": {"lr": 3e-3, "arcface": "tiny-random", "hidden": 32, "mask_every": 3}}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import SHARED_DATA
    tmp = tmp_path_factory.mktemp("train")
    cfg, faces = _config(tmp), _faces(SHARED_DATA)
    torch.set_num_threads(1)
    results = {}
    for stage, steps in (("vqgan", 25), ("lookup", 20), ("prior", 25), ("identity", 15)):
        results[stage] = train_stage(stage, cfg, steps=steps, faces=faces, probe=True, log=lambda m: None)
    return cfg, faces, results


@pytest.mark.parametrize("stage", ["vqgan", "lookup", "prior", "identity"])
def test_stage_loss_decreases(trained, stage):
    res = trained[2][stage]
    assert res["step"] > res["start_step"]
    assert np.isfinite(res["probe_end"]) and np.isfinite(res["probe_start"])
    assert res["probe_end"] < res["probe_start"], res
    assert all(np.isfinite(v) for r in res["history"] for k, v in r.items() if k != "step")


def test_exports_load(trained):
    from pathlib import Path

    from facerefine.models.restorers import load_restorer
    from facerefine.models.arch.identity import load_identity_recovery
    from facerefine.models.arch.latent_prior import load_latent_prior
    cfg, _, results = trained
    run = Path(cfg["out_dir"])
    restorer = load_restorer(str(run / "iqpfr.safetensors"))
    assert restorer.architecture == "IQPFR" and restorer.img_size == 32
    prior = load_latent_prior(run / "latent_prior.safetensors")
    assert prior.config.latent_channels == 2 * TINY_MODEL["emb_dim"]
    assert not torch.allclose(prior.latent_std, torch.ones_like(prior.latent_std))  # statistics were fitted
    recovery, mask = load_identity_recovery(run / "identity_recovery.safetensors")
    assert mask is not None and mask.logits.shape[-1] == 16
    log = (run / "vqgan" / "log.jsonl").read_text().splitlines()
    assert json.loads(log[-1])["step"] == results["vqgan"]["step"]


def test_resume_matches_uninterrupted_run(tmp_path):
    from conftest import SHARED_DATA
    faces = _faces(SHARED_DATA)
    cfg_a, cfg_b = _config(tmp_path / "a"), _config(tmp_path / "b")
    quiet = dict(faces=faces, log=lambda m: None)
    train_stage("vqgan", cfg_a, steps=4, **quiet)
    first = train_stage("vqgan", cfg_b, steps=2, **quiet)
    resumed = train_stage("vqgan", cfg_b, steps=4, **quiet)
    assert first["step"] == 2 and resumed["start_step"] == 2 and resumed["step"] == 4
    from safetensors.torch import load_file
    a = load_file(str(tmp_path / "a" / "run" / "iqpfr.safetensors"))
    b = load_file(str(tmp_path / "b" / "run" / "iqpfr.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-5


def test_stage_names_and_errors(tmp_path):
    assert canonical_stage("1") == "vqgan" and canonical_stage("4") == "identity"
    with pytest.raises(FaceRefineError):
        canonical_stage("nope")
    with pytest.raises(FaceRefineError):
        load_config(tmp_path / "missing.json")
    # the lookup stage needs the codebook stage's output
    cfg = _config(tmp_path)
    with pytest.raises(FaceRefineError):
        train_stage("lookup", cfg, steps=1, faces=_faces(tmp_path), log=lambda m: None)


def test_packaged_configs_parse_and_fit_budget():
    from facerefine.lab.train.stages import iqpfr_config
    from facerefine.lab.train.iqpfr import parameter_megabytes
    from facerefine.models.arch.iqpfr import IQPFR
    compact = load_config("configs/compact.json")
    full = load_config("configs/full512.json")
    assert full["resolution"] == 512 and iqpfr_config(full).latent_size == 32
    model = IQPFR(iqpfr_config(compact))
    assert parameter_megabytes(model) <= 40.0


def test_cli_train_runs(tmp_path):
    from facerefine.cli import main
    from conftest import SHARED_DATA
    cfg = _config(tmp_path)
    faces = _faces(SHARED_DATA)
    cache = tmp_path / "faces.npy"
    np.save(cache, faces)
    (tmp_path / "faces.json").write_text(json.dumps({"size": 32, "framing": "auto", "files": ["x"]}))
    # a folder source: write the faces out as images
    from PIL import Image
    folder = tmp_path / "aligned"
    folder.mkdir()
    for i, f in enumerate(faces):
        Image.fromarray(f).save(folder / f"{i}.png")
    cfg["data"] = {"sources": [str(folder)], "framing": "ffhq", "cache": str(tmp_path / "cache" / "c.npy")}
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    assert main(["train", "vqgan", "--config", str(path), "--steps", "2", "--json"]) == 0
    assert (tmp_path / "cache" / "c.npy").is_file()
    assert (tmp_path / "run" / "vqgan" / "last.safetensors").is_file()


def test_lookup_conditioning_on_frozen_codeformer(tmp_path):
    """Stage 2 on a community checkpoint: only the FiLM conditioning trains; CodeFormer stays frozen."""
    from conftest import SHARED_DATA
    from tiny_models import make_tiny_codeformer
    from safetensors.torch import load_file
    ckpt = make_tiny_codeformer(tmp_path / "cf.pth")
    before = {k: v.clone() for k, v in torch.load(ckpt, weights_only=True)["params_ema"].items()}
    cfg = _config(tmp_path)
    cfg["train"]["batch_size"] = 2
    cfg["stages"]["lookup"] = {"lr": 1e-2, "base": str(ckpt), "quality_hidden": 16}
    res = train_stage("lookup", cfg, steps=3, faces=_faces(SHARED_DATA, 2), probe=True, log=lambda m: None)
    assert res["probe_end"] < res["probe_start"]
    cond = load_file(res["exported"][0])
    assert "to_film.weight" in cond and float(cond["to_film.weight"].abs().max()) > 0
    after = torch.load(ckpt, weights_only=True)["params_ema"]
    assert all(torch.equal(before[k], after[k]) for k in before)  # the checkpoint file is untouched
