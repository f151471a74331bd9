"""Issue 16, item 7: the app never takes a server path from a client, deletes uploads and run folders,
and warns when --listen exposes it."""
from pathlib import Path

import numpy as np
import pytest

from facerefine.ui import service

gr = pytest.importorskip("gradio")


@pytest.fixture
def upload_root(tmp_path, monkeypatch):
    root = tmp_path / "gradio_uploads"
    root.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(root))
    return root


def _upload(root: Path, name: str, size=(48, 64)) -> Path:
    from PIL import Image
    folder = root / f"hash{len(list(root.iterdir()))}"
    folder.mkdir()
    path = folder / name
    Image.fromarray(np.full((*size, 3), 120, np.uint8)).save(path)
    return path


def _app_parts(app):
    fns = app.fns.values() if isinstance(app.fns, dict) else app.fns
    restore = next(f.fn for f in fns if getattr(f, "name", "") == "restore" or f.fn.__name__ == "restore")
    dropdown = next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == "fr-restorer")
    return restore, dropdown


class _Progress:
    def __call__(self, *a, **k):
        pass


def test_restorer_field_offers_only_names_and_model_folder_files(tmp_path):
    import os
    folder = Path(os.environ["FACEREFINE_HOME"]) / "facerestore_models"
    folder.mkdir(parents=True)
    (folder / "my_codeformer.safetensors").write_bytes(b"x" * 16)
    from facerefine.ui import gradio_app
    app = gradio_app.build_app(output_root=str(tmp_path / "out"))
    _, dropdown = _app_parts(app)
    values = [c[1] if isinstance(c, (tuple, list)) else c for c in dropdown.choices]
    assert dropdown.allow_custom_value is False
    assert "my_codeformer.safetensors" in values and "auto" in values
    assert not any("/" in v or "\\" in v for v in values)
    assert app.delete_cache == gradio_app.DELETE_CACHE


@pytest.mark.parametrize("make_path", [
    lambda secret: str(secret),                                   # absolute server path
    lambda secret: os_relpath(secret),                            # relative path from the server's cwd
    lambda secret: "../" + secret.name,
])
def test_app_refuses_a_server_path_in_the_restorer_field(tmp_path, upload_root, monkeypatch, make_path):
    import torch
    from safetensors.torch import save_file
    secret = tmp_path / "private" / "secret.safetensors"
    secret.parent.mkdir()
    save_file({"hidden_tensor_name": torch.zeros(2)}, str(secret))
    touched = []
    from facerefine.models import locate, restorers
    real_resolve = locate.resolve
    monkeypatch.setattr(locate, "resolve", lambda *a, **k: touched.append(a) or real_resolve(*a, **k))
    monkeypatch.setattr(restorers, "load_state_dict", lambda *a, **k: touched.append(a))
    from facerefine.ui import gradio_app
    app = gradio_app.build_app(output_root=str(tmp_path / "out"))
    restore, _ = _app_parts(app)
    photo = _upload(upload_root, "photo.png")
    from facerefine.core import controls
    values = [make_path(secret) if c.name == "restorer" else c.default for c in controls.shown_in("app")]
    out = restore(_Progress(), None, [str(photo)], *values)  # the values in the table's order
    status = out[4]
    assert "Nothing restored" in status and "not offered here" in status
    assert "hidden_tensor_name" not in status and touched == []


def os_relpath(p: Path) -> str:
    import os
    return os.path.relpath(p)


def test_uploads_and_previous_run_folders_are_deleted(tmp_path, upload_root):
    from facerefine.ui import gradio_app
    out_root = tmp_path / "out"
    out_root.mkdir()
    first = _upload(upload_root, "a.png")
    outside = tmp_path / "not_an_upload.png"
    outside.write_bytes(first.read_bytes())
    result = gradio_app._restore_uploads_or_raise([str(first), str(outside)],
                                                  service.Settings(restorer="none", metric=None),
                                                  {"output_root": out_root, "max_megapixels": None}, _Progress())
    assert "Restored 2 of 2" in result[4], result[4]
    assert not first.exists() and not first.parent.exists()  # the upload and its folder are gone
    assert outside.exists()                                  # never anything outside gradio's uploads
    runs = list(out_root.glob("run-*"))
    assert len(runs) == 1
    second = _upload(upload_root, "b.png")
    gradio_app._restore_uploads_or_raise([str(second)], service.Settings(restorer="none", metric=None),
                                         {"output_root": out_root, "max_megapixels": None}, _Progress())
    assert not runs[0].exists() and len(list(out_root.glob("run-*"))) == 1


def test_listen_beyond_localhost_warns(capsys):
    from facerefine.ui import gradio_app
    assert gradio_app.warn_if_exposed("127.0.0.1") is False
    assert capsys.readouterr().err == ""
    assert gradio_app.warn_if_exposed("0.0.0.0") is True
    err = capsys.readouterr().err
    assert "WARNING" in err and "0.0.0.0" in err and "no login" in err
