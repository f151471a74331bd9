"""Issue 16, item 14: what a new user reads. `restore --help` shows defaults, `models list` the folders
searched, `models verify` aligned columns with shipped files hashed, `crop` and `score --faces` say
which box, landmarks and score belong to which face without --json."""
import json
import re

import numpy as np
import pytest
from PIL import Image

from facerefine.cli import build_parser, main
from facerefine.models.locate import PACKAGE_WEIGHTS
from facerefine.models.registry import REGISTRY


def _subparser(name):
    parser = build_parser()
    action = next(a for a in parser._actions if getattr(a, "choices", None) and name in a.choices)
    return action.choices[name]


def test_restore_help_shows_the_defaults():
    text = re.sub(r"\s+", " ", _subparser("restore").format_help())
    for option, default in [("--fidelity", "0.5"), ("--quality", "1.0"), ("--restorer", "auto"),
                            ("--seed", "0"), ("--crop-size", "512"), ("--sampler", "dpmpp_2m"),
                            ("--erode", "8.0"), ("--color-correction", "lab")]:
        section = text.split(f" {option} ", 1)[1].split(" --", 1)[0]
        assert f"default: {default}" in section, (option, section)
    assert "default: None" not in text and "default: False" not in text


def test_models_list_prints_every_folder_searched(capsys, tmp_path, monkeypatch):
    home = tmp_path / "fr_home"
    monkeypatch.setenv("FACEREFINE_HOME", str(home))
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    for kind in ("facerestore_models", "facedetection", "facerefine"):
        assert f"{kind}:" in out and str(home / kind) in out
    assert str(PACKAGE_WEIGHTS) in out


def test_models_verify_columns_are_aligned_and_shipped_files_hashed(capsys, tmp_path, monkeypatch):
    home = tmp_path / "fr_home"
    (home / "facedetection").mkdir(parents=True)
    # a user file with a registry sha256 but the wrong bytes: verify must really hash it
    (home / "facedetection" / "recognition_arcface_ir_se50.pth").write_bytes(b"not the real weights")
    monkeypatch.setenv("FACEREFINE_HOME", str(home))
    assert main(["models", "verify"]) == 1  # the bad file makes the run fail
    lines = capsys.readouterr().out.rstrip().splitlines()
    header, rows = lines[0], lines[1:]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    assert header.split() == ["name", "status", "source", "path"]
    for row in rows:  # every cell starts under its header, at least two spaces after the previous one
        cells = [(m.start(), m.group()) for m in re.finditer(r"\S+", row)]
        assert [c[0] for c in cells] == starts[:len(cells)], row
    by_name = {row.split()[0]: row.split()[1:] for row in rows}
    assert set(by_name) == set(REGISTRY)
    assert by_name["arcface"][:2] == ["bad-hash", "user"]
    shipped = [s.name for s in REGISTRY.values() if s.embedded and (PACKAGE_WEIGHTS / s.file).is_file()]
    assert shipped
    for name in shipped:
        assert by_name[name][1] == "shipped" and by_name[name][0] in ("ok", "shipped"), (name, by_name[name])

    assert main(["models", "verify", "mtcnn", "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"]
    assert entry["status"] == "ok" and entry["source"] == "shipped" and entry["sha256"] == REGISTRY["mtcnn"].sha256


@pytest.fixture
def two_faces(tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    face = skimage_data.astronaut()  # public domain
    path = tmp_path / "two.png"
    Image.fromarray(np.concatenate([face, face[:, ::-1]], axis=1)).save(path)  # 1024x512, two faces
    return path


def test_crop_prints_boxes_and_landmarks_without_json(capsys, tmp_path, two_faces):
    assert main(["crop", str(two_faces), "--out", str(tmp_path / "c"), "--crop-size", "256", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    boxes = re.findall(r"face (\d): box \(([\d.]+),([\d.]+)\)-\(([\d.]+),([\d.]+)\)", out)
    assert [b[0] for b in boxes] == ["0", "1"]
    assert {float(b[1]) < 512 for b in boxes} == {True, False}  # one face in each half
    landmark_lines = [line for line in out.splitlines() if "landmarks" in line]
    assert len(landmark_lines) == 2 and all(len(re.findall(r"\([\d.]+,[\d.]+\)", line)) == 5
                                            for line in landmark_lines)


def test_score_faces_says_which_face_each_score_belongs_to(capsys, two_faces):
    assert main(["score", str(two_faces), "--faces", "--metric", "face-niqe", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    faces = re.findall(r"face (\d) at \((\d+),(\d+)\)-\((\d+),(\d+)\): raw ([\d.-]+)", out)
    assert [f[0] for f in faces] == ["0", "1"]
    assert {int(f[1]) < 512 for f in faces} == {True, False}
