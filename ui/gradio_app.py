"""Standalone gradio app: ``python -m facerefine app`` (127.0.0.1 by default).

Upload one or many photos, set the controls the app offers (core/controls.py, front end "app": restorer,
quality slider, identity refine, paste-back...), run, then compare before/after, read the per-face scores and
download the results. Every problem with an upload becomes a message in the status box; the server keeps running.
"""
from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np

from ..core import controls
from . import service
from .widgets import control_panel

SCORE_HEADERS = ["file", "face", "box (x0,y0,x1,y1)", "detector score", "metric", "before", "after", "change"]
EMPTY_TABLE = [["", "", "", "", "", "", "", ""]]
INTRO = ("**FaceRefine** restores faces: an image-quality prior steers the codebook lookup (quality slider), "
         "identity refine keeps the person recognisable. Upload photos, press **Restore**.")


# the app's sections: the lookup, crop and whole-run controls on top, the refine and paste-back ones folded
SECTIONS = {"refine": "Identity refine (CLR-Face)", "paste": "Paste-back"}


def _elem_id(name: str) -> str:
    return "fr-" + name.replace("_", "-")


def _choice(choices: list[str], preferred: list[str]) -> str:
    return next((c for c in preferred if c in choices), choices[0] if choices else None)


def build_app(*, max_megapixels: float | None = service.DEFAULT_MAX_MEGAPIXELS, device: str = "auto",
              output_root: str | None = None, default_restorer: str | None = None) -> gr.Blocks:
    output_root = Path(output_root or tempfile.mkdtemp(prefix="facerefine-app-"))
    names = [c.name for c in controls.shown_in("app")]  # the callback's values, in the table's order
    # delete_cache: gradio removes uploads and served results older than an hour, and all of them on exit
    with gr.Blocks(title="FaceRefine", delete_cache=DELETE_CACHE) as app:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                files = gr.File(label="Photos (one or many)", file_count="multiple", type="filepath",
                                elem_id="fr-upload")
                widgets = _control_widgets(default_restorer)
                run = gr.Button("Restore", variant="primary", elem_id="fr-run")
                status = gr.Markdown("", elem_id="fr-status")
            with gr.Column(scale=2, min_width=420):
                slider, gallery, table, download = _result_widgets()
        pairs = gr.State([])
        uploads = [files, *[widgets[n] for n in names if controls.BY_NAME[n].kind == "image"]]
        restore = _restore_callback(names, dict(device=device, output_root=output_root,
                                                max_megapixels=max_megapixels, default_restorer=default_restorer))
        run.click(restore, [files, *[widgets[n] for n in names]], [slider, gallery, table, download, status, pairs],
                  concurrency_limit=1
                  ).then(lambda: [None] * len(uploads), None, uploads)  # the uploads were deleted after the run

        def compare(evt: gr.SelectData, current):
            return tuple(current[evt.index]) if current and 0 <= evt.index < len(current) else gr.update()

        gallery.select(compare, [pairs], [slider])
        _hold_uploads_while_open(app, uploads)
    return app


def _control_widgets(default_restorer: str | None) -> dict:
    """The table's controls offered by the app (core/controls.py), by section; {name: widget}."""
    restorers, metrics = service.restorer_choices(), service.metric_choices()
    if default_restorer and default_restorer not in restorers:
        restorers.insert(0, default_restorer)  # the operator's --restorer (may be a path; never the client's)
    overrides = {  # lists known at run time: the restorers on disk, the metrics installed
        "restorer": {"choices": restorers, "value": _choice(restorers, [default_restorer, service.DEFAULT_RESTORER]),
                     "allow_custom_value": False},
        "metric": {"choices": metrics, "value": _choice(metrics, ["auto", "face-niqe"])},
        "reference": {"type": "filepath", "sources": ["upload"], "height": 160}}
    sections: dict[str, list[str]] = {}
    for c in controls.shown_in("app"):
        step = c.option.split(".")[0]
        sections.setdefault(step if step in SECTIONS else "", []).append(c.name)
    widgets = control_panel(gr, sections.pop("", []), _elem_id, overrides)
    for step, names in sections.items():
        with gr.Accordion(SECTIONS[step], open=False):
            widgets.update(control_panel(gr, names, _elem_id, overrides))
    return widgets


def _result_widgets() -> tuple:
    """Before/after slider, results gallery, per-face score table, downloads."""
    return (gr.ImageSlider(label="Before / after", type="filepath", elem_id="fr-slider", interactive=False,
                           max_height=560),
            gr.Gallery(label="Results (click one to compare)", columns=8, height=150, visible=False,
                       object_fit="contain", allow_preview=False, elem_id="fr-gallery"),
            gr.Dataframe(value=EMPTY_TABLE, headers=SCORE_HEADERS, interactive=False,
                         label="Faces: quality before / after (0..1, higher = better)", elem_id="fr-scores"),
            gr.File(label="Download", file_count="multiple", interactive=False, height=120, elem_id="fr-download"))


def _restore_callback(names: list[str], run: dict):
    """The Restore button's callback: the uploads, then the control values in the table's order. gradio hands
    its progress bar and the request only to parameters before those, hence their place."""
    def restore(progress=gr.Progress(), request: gr.Request = None, paths=None, *values):
        settings = service.settings_from_values(dict(zip(names, values)), service.Settings(device=run["device"]))
        refused = service.refuse_restorer(settings.restorer, allowed_extra=(run["default_restorer"],))
        if refused:  # only offered names: a client never names a server path
            return _nothing(refused)
        try:
            return _restore_uploads_or_raise(paths, settings, run, progress, _session(request))
        except Exception as err:  # anything unforeseen still ends as a message, never a dead page
            return _nothing(hide_server_paths(service.friendly_error(err), run["output_root"]))
    return restore


def _nothing(message: str) -> tuple:
    return None, gr.update(value=[], visible=False), EMPTY_TABLE, None, f"**Nothing restored.**\n- ⚠ {message}", []


def _hold_uploads_while_open(app, boxes) -> None:
    # identical uploads share one path: a tab's upload is held until its run (or the tab) ends
    def hold(paths, request: gr.Request):
        hold_uploads(paths if isinstance(paths, list) else [paths], _session(request))

    def release(request: gr.Request):
        release_uploads(None, _session(request))

    for box in boxes:
        box.upload(hold, box, None, queue=False)
    app.unload(release)


def _uploaded_images(settings) -> list:
    """The image controls' uploads (the reference photo): held and deleted like the photos."""
    return [v for n, v in vars(settings).items() if controls.BY_NAME[n].kind == "image" and isinstance(v, str)]


def _restore_uploads_or_raise(paths, settings, run: dict, progress, session: str | None = None):
    """One run over the uploads: (slider, gallery, table, downloads, status, pairs).

    Problems with single files become messages; only unforeseen errors raise (the caller shows them)."""
    paths = [p for p in (paths or []) if p]
    if not paths:
        return None, gr.update(value=[], visible=False), EMPTY_TABLE, None, "Upload at least one photo first.", []
    session = session or _session(None)
    output_root = Path(run["output_root"])
    hold_uploads([*paths, *_uploaded_images(settings)], session)  # (held already when the page's upload came)
    _remove_previous_runs(output_root)  # the previous run's results were served already
    out_dir = Path(tempfile.mkdtemp(prefix="run-", dir=output_root))
    messages, rows, pairs, downloads = [], [], [], []
    for index, path in enumerate(paths):
        name = Path(path).name
        progress((index, len(paths)), desc=f"{name} ({index + 1}/{len(paths)})")
        outcome = service.restore_file(path, settings, progress=_face_progress(progress, index, len(paths)),
                                       max_megapixels=run["max_megapixels"])
        messages += outcome.messages
        if not outcome.ok:
            continue
        if outcome.faces == 0 and not any("face" in m.lower() for m in outcome.messages):
            messages.append(f"{name}: no face found; the image is unchanged.")
        stem = Path(name).stem
        if any(Path(a).name == f"{stem}_restored.png" for _, a in pairs):
            stem = f"{stem}_{index + 1}"  # two uploads with the same name
        before = out_dir / f"{stem}_before.png"
        try:
            after = _save_result(outcome, out_dir / f"{stem}_restored.png")
            _save_preview(outcome.source.image[0], before)
        except Exception as err:  # disk full, ...
            messages.append(f"{name}: could not save the result: {service.friendly_error(err)}")
            continue
        pairs.append((str(before), str(after)))
        downloads.append(str(after))
        for row in outcome.rows:
            change = None if row["before"] is None or row["after"] is None else round(row["after"] - row["before"], 3)
            rows.append([name, row["face"], ", ".join(str(v) for v in row["bbox"]), row["detector score"],
                         row["metric"], row["before"], row["after"], change])
    release_uploads([*paths, *_uploaded_images(settings)], session)  # uploaded photos do not outlive the run
    messages = [hide_server_paths(m, output_root) for m in messages]
    progress((len(paths), len(paths)), desc="done")
    if len(downloads) > 1:
        downloads.insert(0, _zip(downloads, out_dir / "facerefine_results.zip"))
    done = len(pairs)
    head = (f"Restored {done} of {len(paths)} image(s), {len(rows)} face(s)." if done
            else f"Nothing restored ({len(paths)} upload(s)).")
    if messages:
        for message in messages:
            gr.Warning(message)
    status = "\n".join([f"**{head}**"] + [f"- ⚠ {m.strip()}".replace("\n", "\n  ") for m in messages])
    gallery = gr.update(value=[after for _, after in pairs], visible=len(pairs) > 1)  # one result: the slider shows it
    return (pairs[0] if pairs else None, gallery, rows or EMPTY_TABLE,
            downloads or None, status, pairs)


def _face_progress(progress, index: int, total: int):
    """restore_images' progress(stage, done, count) -> the page's progress bar over all uploads."""
    def report(stage, done, count):
        fraction = (index + (done / count if count else 1.0)) / total
        progress(fraction, desc=f"image {index + 1}/{total}: {stage}")
    return report


def _save_result(outcome, path: Path) -> str:
    """Restored image at the source's bit depth, alpha kept (core image_io)."""
    from ..core.image_io import save_image
    source = outcome.source
    alpha = getattr(source, "alpha", None)
    bit_depth = 16 if getattr(source, "bit_depth", 8) == 16 else 8
    save_image(path, outcome.tensor[None] if outcome.tensor.ndim == 3 else outcome.tensor, alpha=alpha,
               bit_depth=bit_depth)
    return str(path)


def _save_preview(image, path: Path) -> None:
    from PIL import Image
    array = (image.clamp(0, 1) * 255).round().byte().cpu().numpy()
    Image.fromarray(np.ascontiguousarray(array), "RGB").save(path)


def _zip(files: list[str], target: Path) -> str:
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, arcname=Path(f).name)
    return str(target)


def launch(host: str = "127.0.0.1", port: int = 7860, *, max_megapixels: float | None = service.DEFAULT_MAX_MEGAPIXELS,
           device: str = "auto", default_restorer: str | None = None, max_file_size: str = "200mb",
           queue_size: int = 16, block: bool = True):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    warn_if_exposed(host)
    output_root = tempfile.mkdtemp(prefix="facerefine-app-")
    app = build_app(max_megapixels=max_megapixels, device=device, output_root=output_root,
                    default_restorer=default_restorer)
    app.queue(default_concurrency_limit=1, max_size=queue_size)
    saved = {}
    if block and threading.current_thread() is threading.main_thread():
        # SIGTERM (systemd, docker) = Ctrl+C; and SIGINT always stops it, also when a shell started it in the
        # background with SIGINT ignored (the leftover-cleanup below then still runs)
        saved = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        app.launch(server_name=host, server_port=port, share=False, inbrowser=False, show_error=True,
                   max_file_size=max_file_size, prevent_thread_lock=not block, quiet=False,
                   footer_links=["api", "settings"])
    finally:
        if block:
            leave_nothing(app, output_root)
            for sig, handler in saved.items():
                signal.signal(sig, handler)
        else:
            atexit.register(leave_nothing, app, output_root)
    return app


# ---------------------------------------------------------------- leaving nothing behind, exposing nothing

DELETE_CACHE = (3600, 3600)  # gradio: every hour delete cached files older than an hour; all on shutdown
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def warn_if_exposed(host: str) -> bool:
    """A clear warning when --listen serves beyond this machine (no login, uploads run models here)."""
    if str(host).strip().lower() in LOCAL_HOSTS:
        return False
    print(f"WARNING: the FaceRefine app is listening on {host}: anyone who can reach this machine on the "
          f"network can upload photos and run models on it (there is no login). Use it only on a network "
          f"you trust; without --listen it serves 127.0.0.1 only.", file=sys.stderr, flush=True)
    return True


def _upload_root() -> Path:
    try:
        from gradio.utils import get_upload_folder
        return Path(get_upload_folder()).resolve()
    except Exception:  # older gradio
        return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()


def delete_uploads(paths) -> list[str]:
    """Delete uploaded files (only inside gradio's upload folder; never anything else) and their emptied
    per-upload folders. Returns what was deleted."""
    root = _upload_root()
    deleted = []
    for p in paths:
        if not p:
            continue
        try:
            path = Path(str(p)).resolve()
        except OSError:
            continue
        if root not in path.parents or not path.is_file():
            continue
        try:
            path.unlink()
            deleted.append(str(path))
            if path.parent != root and not any(path.parent.iterdir()):
                path.parent.rmdir()
        except OSError:
            pass
    return deleted


def leave_nothing(app, output_root) -> None:
    """When the app stops: close it, delete gradio's cached copies of this app's uploads and results (its own
    shutdown may not get that far while a browser holds a connection open) and the app's own folder."""
    try:
        app.close()
    except Exception:  # noqa: BLE001 - already closed
        pass
    delete_uploads([f for files in getattr(app, "temp_file_sets", []) for f in list(files)])
    shutil.rmtree(output_root, ignore_errors=True)


_holds: dict[str, set[str]] = {}  # upload path -> sessions that may still read it
_holds_lock = threading.Lock()


def _session(request) -> str:
    return getattr(request, "session_hash", None) or f"request-{os.urandom(8).hex()}"


def hold_uploads(paths, session: str) -> None:
    """``session`` may still read these uploads (gradio keeps identical uploads of every session at one path)."""
    with _holds_lock:
        for p in paths:
            if p:
                _holds.setdefault(str(p), set()).add(session)


def release_uploads(paths, session: str) -> list[str]:
    """``session`` is done with ``paths`` (None: with all it holds); deletes those no other session holds."""
    with _holds_lock:
        free = []
        for p in [str(p) for p in paths if p] if paths is not None else list(_holds):
            holders = _holds.get(p, set())
            if paths is None and session not in holders:
                continue
            holders.discard(session)
            if not holders:
                _holds.pop(p, None)
                free.append(p)
        return delete_uploads(free)


def hide_server_paths(text: str, *folders) -> str:
    """``text`` with every path inside the upload, temporary and app folders cut to its file name."""
    roots = {str(f) for root in (_upload_root(), tempfile.gettempdir(), *folders) if root
             for f in (Path(root), Path(root).resolve())}
    for root in sorted(roots, key=len, reverse=True):
        text = re.sub(re.escape(root) + r"[^\s'\":,]*", lambda m: Path(m.group()).name or "…", text)
    return text


def _remove_previous_runs(output_root: Path) -> None:
    for old in output_root.glob("run-*"):
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
