"""Issue 25's benchmark pieces on small synthetic tensors: fine-detail energy, v3 rows, the five-fidelity check,
the targets for v2 and v3 side by side, and the generalisation report's PSNR-gain lines (no real benchmark run)."""
import math

import pytest
import torch


def _textured(n=2, size=64, seed=0):
    """Faces with fine texture (a checker of 2-px cells plus random grain) on a smooth gradient."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    checker = (((yy // 2) + (xx // 2)) % 2).float()
    base = 0.3 + 0.3 * xx.float() / size
    grain = torch.rand(n, 3, size, size, generator=g)
    return (base + 0.08 * checker + 0.05 * grain).clamp(0, 1)


def _mask(n=2, size=64):
    m = torch.zeros(n, size, size)
    m[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    return m


def _blur(x, sigma=2.0):
    from facerefine.lab.eval.face_metrics import _gaussian_blur
    n, c, h, w = x.shape
    return _gaussian_blur(x.reshape(n * c, 1, h, w), sigma).reshape(n, c, h, w)


# ------------------------------------------------------------------------------------------- detail

def test_detail_ratio_hq_is_one_blur_lowers_noise_raises():
    from facerefine.lab.eval.face_metrics import detail_energy, detail_ratio
    hq, masks = _textured(2, 512), _mask(2, 512)
    assert torch.allclose(detail_ratio(hq, hq, masks), torch.ones(2))
    assert (detail_energy(hq, masks) > 1).all()                     # grey levels², not 0..1 units
    blurred = detail_ratio(_blur(hq), hq, masks)
    assert (blurred < 0.3).all()
    noisy = (hq + 0.05 * torch.randn(hq.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert (detail_ratio(noisy, hq, masks) > 1.2).all()
    flat = torch.full_like(hq, 0.5)
    assert torch.allclose(detail_ratio(flat, hq, masks), torch.zeros(2), atol=1e-6)
    # only the face mask counts: texture outside it changes nothing
    outside = hq.clone()
    outside[..., :4, :] = torch.rand(2, 3, 4, 512)
    assert torch.allclose(detail_energy(outside, masks), detail_energy(hq, masks))
    # the precomputed HQ energy gives the same ratio
    assert torch.allclose(detail_ratio(_blur(hq), hq, masks, detail_energy(hq, masks)), blurred)


def test_detail_sigma_scales_with_the_crop_size():
    from facerefine.lab.eval.face_metrics import DETAIL_SIGMA, detail_energy
    assert DETAIL_SIGMA == 1.5                                       # px at 512²
    hq = _textured(1, 256)
    big = torch.nn.functional.interpolate(hq, scale_factor=2, mode="nearest")   # the same picture at 512²
    a, b = float(detail_energy(hq, _mask(1, 256))), float(detail_energy(big, _mask(1, 512)))
    assert 0.7 < a / b < 1.4   # sigma 0.75 px at 256 measures what sigma 1.5 px measures at 512


# ------------------------------------------------------------------------------------------- rows

def test_v3_rows_parse_like_v2s():
    from facerefine.lab.eval.heldout import DEFAULT_ROWS, FIDELITY_STEPS, BenchOptions, model_restorer, parse_rows
    opts = BenchOptions(v2="b.safetensors", v3="c.safetensors")
    assert BenchOptions().v3 == "facerefine-compact-v3" and BenchOptions().targets_for == ("v2", "v3")
    by = {r.token: r for r in parse_rows(DEFAULT_ROWS, opts)}
    for model, path in (("v2", "b.safetensors"), ("v3", "c.safetensors")):
        assert by[model].restorer == path and by[model].model == model and by[model].label == f"compact {model} (defaults)"
        for w in FIDELITY_STEPS:
            assert (by[f"{model}@w{w:g}"].quality, by[f"{model}@w{w:g}"].fidelity) == (1.0, w)
        assert (by[f"{model}@q0"].quality, by[f"{model}@q0"].fidelity) == (0.0, 0.5)
    assert by["v3"].key == by["v3@q1"].key == by["v3@w0.5"].key
    rows = parse_rows("V3@q0w0.25,v3@w0.75", opts)
    assert rows[0].restorer == "c.safetensors" and rows[0].model == "v3" and (rows[0].quality, rows[0].fidelity) == (0, 0.25)
    assert rows[0].label == "compact v3 quality 0 fidelity 0.25" and rows[1].fidelity == 0.75
    assert model_restorer("v1", opts) == ("facerefine-compact", "v1", "compact v1")
    assert model_restorer("codeformer", opts) == ("codeformer", "codeformer", "codeformer")


# ------------------------------------------------------------------------------------------- five fidelities

def _fidelity_outputs(lq, steps, gain=4.0, duplicate=None, swap=None):
    """Synthetic outputs: lq + (1 - w) * gain grey levels (w = 1 returns the input), as 8-bit tensors."""
    outs = {}
    for w in steps:
        x = lq * 255 + (1 - w) * gain
        outs[w] = x.round().clamp(0, 255).byte()
    if duplicate:
        outs[duplicate[1]] = outs[duplicate[0]].clone()
    if swap:
        outs[swap[0]], outs[swap[1]] = outs[swap[1]], outs[swap[0]]
    return outs


def test_fidelity_check_monotone_passes_duplicate_or_reversed_fails():
    from facerefine.lab.eval.heldout import FIDELITY_STEPS, fidelity_check
    lq = (_textured(2, 32) * 255).round() / 255
    masks = _mask(2, 32)
    ok = fidelity_check(_fidelity_outputs(lq, FIDELITY_STEPS), lq, masks)
    assert ok["fidelity_check"] and ok["fidelity_distinct"] and ok["fidelity_change_falls"]
    assert ok["fidelity_steps"] == list(FIDELITY_STEPS) and ok["fidelity_change_from_input"][-1] == 0
    assert ok["fidelity_min_pairwise_grey_levels"] == pytest.approx(1.0, abs=0.01)
    # fidelity 0 bit-identical to 0.5 (the bug issue 25 names): not five different outputs
    dup = fidelity_check(_fidelity_outputs(lq, FIDELITY_STEPS, duplicate=(0.5, 0.0)), lq, masks)
    assert not dup["fidelity_check"] and not dup["fidelity_distinct"]
    assert dup["fidelity_min_pairwise_grey_levels"] == 0 and sorted(dup["fidelity_closest_pair"]) == [0.0, 0.5]
    # five different outputs, but the change from the input does not fall with w
    rev = fidelity_check(_fidelity_outputs(lq, FIDELITY_STEPS, swap=(0.25, 0.75)), lq, masks)
    assert rev["fidelity_distinct"] and not rev["fidelity_change_falls"] and not rev["fidelity_check"]
    # float outputs are measured the same as 8-bit ones
    as_float = {w: x.float() / 255 for w, x in _fidelity_outputs(lq, FIDELITY_STEPS).items()}
    assert fidelity_check(as_float, lq, masks) == ok


def test_slider_checks_run_the_fidelity_check_when_all_five_ran():
    from facerefine.lab.eval.heldout import BenchOptions, parse_rows, slider_checks
    lq = (_textured(2, 32) * 255).round() / 255
    masks = _mask(2, 32)
    rows = parse_rows("lq,v3,v3@w0,v3@w0.25,v3@w0.75,v3@w1,v2,v2@w1", BenchOptions())
    outs = _fidelity_outputs(lq, (0.0, 0.25, 0.5, 0.75, 1.0))
    outputs = {"v3": outs[0.5], "v3@w0": outs[0.0], "v3@w0.25": outs[0.25], "v3@w0.75": outs[0.75],
               "v3@w1": outs[1.0], "v2": outs[0.5], "v2@w1": outs[1.0]}
    table = [{"row": t, "mean": {"mad_lq": 0.0}} for t in outputs]
    checks = slider_checks(rows, outputs, lq, masks, table, 1.0, 0.5)
    assert checks["v3"]["fidelity_check"] is True
    assert "fidelity_check" not in checks["v2"]   # only two fidelities ran for v2


# ------------------------------------------------------------------------------------------- targets

def _row(token, model, quality=None, fidelity=None, **mean):
    return {"row": token, "label": token, "model": model, "quality": quality, "fidelity": fidelity, "mean": mean}


def _results():
    """v3 passes every issue-25 target, v2 fails every one."""
    lq_heavy = dict(psnr=22.0, ssim=0.60, delta_e=3.0, detail=0.05, identity=0.50, id_facenet=0.90)
    heavy = [_row("lq", None, **lq_heavy),
             _row("v2", "v2", 1.0, 0.5, psnr=22.1, ssim=0.61, delta_e=3.9, detail=0.02, identity=0.51,
                  id_facenet=0.92, **{"face-iqa": 0.38}),
             _row("v3", "v3", 1.0, 0.5, psnr=23.0, ssim=0.65, delta_e=3.2, detail=0.6, identity=0.45,
                  id_facenet=0.80, **{"face-iqa": 0.7})]
    medium = [_row("lq", None, psnr=27.0, ssim=0.75, delta_e=2.0),
              _row("v2@q1", "v2", 1.0, 0.5, psnr=28.4, ssim=0.77, delta_e=2.0),   # found by its setting
              _row("v3", "v3", 1.0, 0.5, psnr=28.6, ssim=0.79, delta_e=2.0)]
    checks = {"medium": {
        "v2": {"quality_0_vs_1_grey_levels": 1.6, "fidelity_check": False, "fidelity_distinct": False,
               "fidelity_change_falls": False, "fidelity_min_pairwise_grey_levels": 0.0},
        "v3": {"quality_0_vs_1_grey_levels": 3.5, "fidelity_check": True, "fidelity_distinct": True,
               "fidelity_change_falls": True, "fidelity_min_pairwise_grey_levels": 0.8}}}
    return {"defaults": {"quality": 1.0, "fidelity": 0.5}, "rows": {"heavy": heavy, "medium": medium},
            "checks": checks}


def test_issue25_targets_pass_for_one_model_and_fail_for_the_other():
    from facerefine.lab.eval.heldout import evaluate_targets_v3
    res = _results()
    v3 = {(t["severity"], t["target"]): t for t in evaluate_targets_v3(res)}
    v2 = {(t["severity"], t["target"]): t for t in evaluate_targets_v3(res, "v2")}
    assert set(v3) == set(v2) and len(v3) == 11
    assert all(t["pass"] for t in v3.values()), [k for k, t in v3.items() if not t["pass"]]
    assert not any(t["pass"] for t in v2.values()), [k for k, t in v2.items() if t["pass"]]
    targets = [k[1] for k in v3]
    for needle in ("PSNR >= LQ + 0.8 dB", "ΔE <= LQ + 0.5", "face-iqa >= 0.6", "detail (HQ = 1) >= 0.5",
                   "identity distance (dlib) <= 0.95 × LQ's", "identity distance (FaceNet) <= 0.95 × LQ's",
                   "PSNR >= LQ + 1.5 dB", "SSIM >= LQ + 0.03", "quality 0 vs 1 differ >= 3 grey levels (face)"):
        assert needle in targets, needle
    assert v3[("heavy", "PSNR >= LQ + 0.8 dB")]["value"] == pytest.approx(1.0)
    assert v3[("heavy", "identity distance (dlib) <= 0.95 × LQ's")]["value"] == pytest.approx(0.9)
    assert v2[("medium", "PSNR >= LQ + 1.5 dB")]["value"] == pytest.approx(1.4)
    assert all(t["model"] == "v3" for t in v3.values())
    # a judge or a row that was not measured gives no target; a model that did not run gives none at all
    del res["rows"]["heavy"][0]["mean"]["id_facenet"]
    assert not any("FaceNet" in t["target"] for t in evaluate_targets_v3(res))
    assert evaluate_targets_v3(res, "v9") == []
    assert evaluate_targets_v3({**res, "rows": {"mild": res["rows"]["medium"]}}) == []


def test_issue14_targets_still_for_v2_and_the_report_shows_models_side_by_side():
    from facerefine.lab.eval.heldout import evaluate_targets, evaluate_targets_v3, markdown_report
    res = _results()
    t14 = evaluate_targets(res)
    assert t14 and {t["model"] for t in t14} == {"v2"}
    assert any(t["target"] == "PSNR >= LQ + 1.0 dB" and t["pass"] for t in t14)   # medium: +1.4
    report_in = {"faces": 2, "detector": "mtcnn", "size": 64, "seed": 0, "lookup_mode": "auto",
                 "defaults": res["defaults"], "device": "cpu", "torch_threads": 1, "notes": [],
                 "severities": {"heavy": {"description": "h"}, "medium": {"description": "m"}},
                 "rows": res["rows"], "checks": {}, "files": {}, "hq": {"detail": 1.0},
                 "targets": t14, "targets_issue25": evaluate_targets_v3(res, "v2") + evaluate_targets_v3(res)}
    md = markdown_report(report_in)
    assert "## Issue-25 targets (at defaults)" in md
    assert "| severity | target | compact v2 | compact v3 |" in md
    assert "| heavy | PSNR >= LQ + 0.8 dB | +0.100 **no** | +1.000 yes |" in md
    assert "| heavy | detail (HQ = 1) >= 0.5 | 0.020 **no** | 0.600 yes |" in md
    assert "detail (HQ = 1)" in md.split("## heavy")[1].split("\n")[2]   # the column in the table header
    assert "ID dist (FaceNet) ↓" in md and "ID dist (dlib) ↓" in md


def test_report_prints_the_fidelity_check_line():
    from facerefine.lab.eval.heldout import _check_lines
    line = " ".join(_check_lines("v3", {"fidelity_check": False, "fidelity_steps": [0, 0.25, 0.5, 0.75, 1],
                                        "fidelity_change_from_input": [5, 4, 4, 2, 0],
                                        "fidelity_change_falls": False, "fidelity_closest_pair": [0.25, 0.5],
                                        "fidelity_min_pairwise_grey_levels": 0.0, "fidelity_distinct": False}))
    assert line.startswith(" compact v3: change from the input over fidelity 0: 5.00 → 0.25: 4.00")
    assert "does not fall monotonically" in line and "closest pair 0.25 vs 0.5" in line
    assert "not five different outputs" in line


# ------------------------------------------------------------------------------------------- generalisation

def test_generalisation_psnr_gain_lines_and_columns():
    from facerefine.lab.eval.generalisation import UNSEEN_PSNR_GAIN_DB, markdown, psnr_gains
    assert UNSEEN_PSNR_GAIN_DB == 0.5
    rows = {"lq": {"psnr": 25.0, "ssim": 0.7, "delta_e": 2.0, "identity": 0.4, "detail": 0.1},
            "classical": {"psnr": 25.2, "ssim": 0.71, "delta_e": 2.1, "identity": 0.41, "detail": 0.2},
            "v3": {"psnr": 25.7, "ssim": 0.74, "delta_e": 1.9, "identity": 0.35, "detail": 0.6}}
    gains = psnr_gains(rows)
    assert set(gains) == {"classical", "v3"}
    assert gains["v3"]["pass"] and not gains["classical"]["pass"]
    assert math.isclose(gains["v3"]["psnr_gain"], 0.7)
    md = markdown({"faces": 2, "seed": 0, "judges": ["identity"], "notes": ["n"], "unseen_psnr_gain": gains,
                   "tables": {"unseen": rows, "heavy": rows}})
    assert "ΔE00 face ↓" in md and "ID dist (dlib) ↓" in md and "ID dist (FaceNet) ↓" not in md
    assert "- PSNR gain over LQ, v3: +0.70 dB (target ≥ +0.5 dB: pass)" in md
    assert "- PSNR gain over LQ, classical: +0.20 dB (target ≥ +0.5 dB: **fail**)" in md
    assert md.count("PSNR gain over LQ") == 2                                 # the unseen family only


# ------------------------------------------------------------------------------------------- the whole run

def _fake_restore(lq, quality, fidelity):
    """A stand-in restorer with the compact models' fidelity law: input + strength(w) * correction."""
    strength = 2 * (1 - fidelity) if fidelity >= 0.5 else 1 + (0.5 - fidelity)
    correction = (_blur(lq, 1.0) - lq) * (0.5 + 0.5 * quality) + 0.02 * quality
    return (lq + strength * correction).clamp(0, 1)


def test_benchmark_run_with_a_stand_in_restorer(tmp_path, monkeypatch):
    """run_benchmark end to end on two synthetic faces: rows, detail column, checks, targets and report."""
    from pathlib import Path
    from types import SimpleNamespace

    from facerefine.lab.eval import heldout
    lm = [[90.0, 110.0], [166.0, 110.0], [128.0, 145.0], [100.0, 180.0], [156.0, 180.0]]
    face = SimpleNamespace(landmarks=lm, affine=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], bbox=[60, 60, 196, 220])
    hq = (_textured(2, 256) * 255).round() / 255
    monkeypatch.setattr(heldout, "heldout_photos", lambda root=None: [Path("a.jpg"), Path("b.jpg")])
    monkeypatch.setattr(heldout, "align_photos", lambda paths, *a, **k: (hq, [face, face], list(paths)))
    real_get = heldout.Restorers.get
    monkeypatch.setattr(heldout.Restorers, "get", lambda self, name: "fake" if name == "fake" else real_get(self, name))
    monkeypatch.setattr(heldout.Restorers, "run", lambda self, r, lq, faces, q, w, e=None: (_fake_restore(lq, q, w),
                                                                                   [0.01] * lq.shape[0]))
    opts = heldout.BenchOptions(severities=("medium", "heavy"), size=256, metrics=(), default_critic=False,
                                identity=False, v2="facerefine-no-such-model", v3="fake",
                                rows="lq,v2," + ",".join(f"v3@w{w:g}" for w in heldout.FIDELITY_STEPS) + ",v3@q0")
    res = heldout.run_benchmark(tmp_path / "bench", opts, log=lambda m: None)
    table = {e["row"]: e for e in res["rows"]["medium"]}
    assert list(table) == ["lq", "v3@w0", "v3@w0.25", "v3@w0.5", "v3@w0.75", "v3@w1", "v3@q0"]   # v2 left out
    assert any("facerefine-no-such-model" in n and "left out" in n for n in res["notes"])
    assert table["v3@w0.5"]["model"] == "v3" and 0 < table["v3@w0.5"]["mean"]["detail"] < 1
    assert table["v3@w1"]["mean"]["mad_lq"] == 0
    chk = res["checks"]["medium"]["v3"]
    assert chk["fidelity_check"] and chk["quality_0_vs_1_grey_levels"] > 0
    got = {(t["severity"], t["target"]) for t in res["targets_issue25"]}
    assert {t["model"] for t in res["targets_issue25"]} == {"v3"}   # v2 did not run
    assert ("medium", "fidelity: the change from the input falls monotonically as w rises") in got
    assert ("heavy", "detail (HQ = 1) >= 0.5") in got
    report = (tmp_path / "bench" / "report.md").read_text()
    assert "## Issue-25 targets (at defaults)" in report and "| compact v3 |" in report
    assert "change from the input over fidelity 0:" in report
