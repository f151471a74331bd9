"""The eval harness: HQ folder -> seeded LQ -> ablations -> table, grid and plots; LQ-only -> NR-IQA."""
import json
from pathlib import Path

import pytest
import torch

from facerefine.lab.eval.harness import EvalOptions, markdown_report, psnr, run_eval, ssim


def _write_faces(folder: Path, n=3, size=64):
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    for i in range(n):
        face = ((xx / 0.6) ** 2 + (yy / 0.8) ** 2 < 1).float()
        img = 0.3 + 0.5 * torch.rand(3, 1, 1, generator=g) * face + 0.1 * torch.rand(1, size, size, generator=g)
        Image.fromarray((img.clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()).save(folder / f"face{i}.png")
    return folder


@pytest.fixture(scope="module")
def tiny_restorer(tmp_path_factory):
    from tiny_models import make_tiny_iqpfr

    from facerefine.models.arch.latent_prior import LatentPriorConfig, LatentScoreModel, save_latent_prior
    tmp = tmp_path_factory.mktemp("eval_models")
    path = make_tiny_iqpfr(tmp / "tiny_iqpfr.safetensors")
    torch.manual_seed(0)
    prior = LatentScoreModel(LatentPriorConfig(latent_channels=64, cond_channels=32, latent_size=16, hidden=32,
                                               depth=1, heads=2, restorer_arch="IQPFR"))
    prior_path = save_latent_prior(prior, tmp / "prior.safetensors")
    return path, prior_path


def test_hq_folder_table_grid_plots(tmp_path, tiny_restorer):
    restorer, prior = tiny_restorer
    folder = _write_faces(tmp_path / "hq")
    opts = EvalOptions(restorer=str(restorer), latent_prior=str(prior), refine_steps=2, metrics=("face-niqe",),
                       qualities=(0.0, 1.0), identity_strengths=(0.0, 1.0))
    res = run_eval(folder, tmp_path / "out", opts, log=lambda m: None)
    names = [r["variant"] for r in res["rows"]]
    assert names[0] == "LQ input" and names[-1] == "HQ (reference)"
    assert {"base lookup (quality 0)", "+ quality slider (quality 1)", "+ identity refine",
            "+ reference photo"} <= set(names)
    lq_row, hq_row = res["rows"][0], res["rows"][-1]
    assert hq_row["psnr"] > 90 and abs(hq_row["ssim"] - 1) < 1e-4  # HQ against itself
    assert lq_row["psnr"] < 60
    base = next(r for r in res["rows"] if r["variant"].startswith("base"))
    assert 0.0 <= base["code_acc"] <= 1.0 and "face-niqe" in base
    refined = next(r for r in res["rows"] if r["variant"] == "+ identity refine")
    assert not refined.get("skipped")  # the latent prior runs even without ArcFace
    assert next(r for r in res["rows"] if r["variant"] == "+ reference photo").get("skipped")  # no references
    assert len(res["curves"]["quality"]) == 2
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| variant |" in report and "PSNR" in report and "n/a" in report
    assert (tmp_path / "out" / "grid.png").is_file() and (tmp_path / "out" / "plot_quality.png").is_file()
    from PIL import Image
    grid = Image.open(tmp_path / "out" / "grid.png")
    assert grid.size[0] > 3 * 64  # three columns: LQ / ours / HQ
    assert json.loads((tmp_path / "out" / "results.json").read_text())["faces"] == 3


def test_lq_only_reports_nr_iqa_only(tmp_path, tiny_restorer):
    restorer, _ = tiny_restorer
    folder = _write_faces(tmp_path / "lq", n=2)
    opts = EvalOptions(restorer=str(restorer), lq_only=True, metrics=("face-niqe",), latent_prior="none",
                       qualities=())
    res = run_eval(folder, tmp_path / "out", opts, log=lambda m: None)
    for row in res["rows"]:
        assert "psnr" not in row and "ssim" not in row
    assert "face-niqe" in res["rows"][0]


def test_seeded_lq_is_reproducible(tmp_path, tiny_restorer):
    restorer, _ = tiny_restorer
    folder = _write_faces(tmp_path / "hq", n=2)
    opts = EvalOptions(restorer=str(restorer), metrics=(), latent_prior="none", qualities=(1.0,))
    a = run_eval(folder, tmp_path / "a", opts, log=lambda m: None)
    b = run_eval(folder, tmp_path / "b", opts, log=lambda m: None)
    assert a["rows"] == b["rows"]


def test_metrics_and_report_format():
    x = torch.rand(2, 3, 32, 32)
    assert float(psnr(x, x).min()) > 90 and float(ssim(x, x).min()) > 0.999
    assert float(psnr(x, 1 - x).max()) < 20
    md = markdown_report({"restorer": "r", "architecture": "IQPFR", "faces": 1, "size": 64, "seed": 0,
                          "lq_only": False, "notes": ["a note"],
                          "rows": [{"variant": "LQ input", "psnr": 20.0}, {"variant": "x", "skipped": True}]})
    assert "| LQ input | 20.00 |" in md and "| x | n/a |" in md and "- a note" in md


def test_cli_eval(tmp_path, tiny_restorer):
    from facerefine.cli import main
    restorer, _ = tiny_restorer
    folder = _write_faces(tmp_path / "hq", n=2)
    code = main(["eval", str(folder), "-o", str(tmp_path / "o"), "--restorer", str(restorer), "--metrics",
                 "", "--latent-prior", "none", "--json"])
    assert code == 0 and (tmp_path / "o" / "report.md").is_file()


def test_london_heldout_faces_align(london_dir):
    from facerefine.lab import datasets
    from facerefine.lab.eval.harness import find_references, load_faces
    files = datasets.london_split(london_dir)["heldout_neutral"][:2]
    refs = find_references(files, "london-smiling")
    assert all(r is not None and r.parent.name == "smiling" for r in refs)
    assert [datasets.london_identity(r) for r in refs] == [datasets.london_identity(f) for f in files]
    faces = load_faces(files, 64)
    assert faces.shape == (2, 3, 64, 64) and 0.2 < float(faces.mean()) < 0.9
