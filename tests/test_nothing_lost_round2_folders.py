"""Issue 26, item 7: a folder run processes every readable image in it (GIF, JFIF, an image whose name has
no image suffix, ...) and lists everything else as skipped, with a reason; nothing is passed over silently."""
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import run_cli_json


def _noise(seed, size=(40, 48)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _folder(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    Image.fromarray(_noise(0)).save(src / "a.png")
    Image.fromarray(_noise(1)).convert("P").save(src / "b.gif")
    Image.fromarray(_noise(2)).save(src / "c.jfif", format="JPEG", quality=95)
    Image.fromarray(_noise(3)).save(src / "d.tga")
    Image.fromarray(_noise(4)).save(src / "e_from_the_web", format="PNG")  # no suffix, still a PNG
    (src / "notes.txt").write_text("not a photo")
    (src / "raw").mkdir()
    return src


def test_restore_folder_processes_every_readable_image_and_lists_the_rest(capsys, tmp_path):
    src = _folder(tmp_path)
    code, res, err = run_cli_json(capsys, "restore", src, "-o", tmp_path / "out", "--restorer", "none",
                                  "--device", "cpu")
    assert code == 0, err
    done = sorted(Path(r["input"]).name for r in res["results"])
    assert done == ["a.png", "b.gif", "c.jfif", "d.tga", "e_from_the_web"]
    for r in res["results"]:
        assert Path(r["output"]).is_file()
    assert Path(next(r["output"] for r in res["results"] if r["input"].endswith("b.gif"))).suffix == ".png"
    skipped = {Path(s["input"]).name: s["reason"] for s in res["skipped"]}
    assert set(skipped) == {"notes.txt", "raw"}
    assert "not an image" in skipped["notes.txt"] and "folder" in skipped["raw"]
    assert "notes.txt: skipped" in err and "raw: skipped" in err  # said on stderr too


def test_crop_and_score_folders_see_gif_and_jfif(capsys, tmp_path):
    from facerefine.core.batch_inputs import expand_inputs
    src = _folder(tmp_path)
    paths, failed = expand_inputs([src])
    assert [p.name for p in paths] == ["a.png", "b.gif", "c.jfif", "d.tga", "e_from_the_web"] and not failed
    err = capsys.readouterr().err
    assert "notes.txt: skipped" in err and "raw: skipped" in err


def test_a_folder_with_nothing_readable_says_why(capsys, tmp_path):
    from facerefine.core.batch_inputs import expand_inputs
    (tmp_path / "notes.txt").write_text("x")
    paths, failed = expand_inputs([tmp_path])
    assert not paths and "no images" in failed[0]["error"]
    assert "notes.txt: skipped" in capsys.readouterr().err
