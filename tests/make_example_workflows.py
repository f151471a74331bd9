"""Write example_workflows/*.json (ComfyUI UI format) from the node definitions of a live server.

    python tests/make_example_workflows.py [--no-thumbnails] [--only=09_restore_video]

Starts the test ComfyUI engine (tests/comfy_engine.py), reads /object_info, and lays out each
workflow from the compact specs below: widget values are filled in INPUT_TYPES order (the way
the front-end saves them), links carry the socket types. The engine tests submit these files.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = REPO / "example_workflows"
EXAMPLE_IMAGE = "facerefine_example.png"   # put your own photo in ComfyUI/input and pick it
EXAMPLE_VIDEO = "facerefine_example.mp4"   # put your own clip in ComfyUI/input and pick it
RESTORER_FILE = "facerefine_compact.safetensors"  # the embedded default restorer
COL = 360

# node: (id, type, column, row, {widget: value}); link: (src_id, output_name, dst_id, input_name)
NOTE = "Note"


def _load(i, col=0, row=0):
    return (i, "LoadImage", col, row, {"image": EXAMPLE_IMAGE})


SPECS = {
    "01_face_crop": dict(
        note="Face Crop: finds faces (5 landmarks) and aligns each to a 512x512 crop. "
             "detector=auto uses RetinaFace when its weights are in models/facedetection, "
             "else the embedded MTCNN (offline).",
        nodes=[_load(1), (2, "FaceRefineFaceCrop", 1, 0, {}), (3, "PreviewImage", 2, 0, {})],
        links=[(1, "IMAGE", 2, "image"), (2, "crops", 3, "images")]),
    "02_quality_score": dict(
        note="Quality Score: a no-reference quality score per face (0..1, higher = better). "
             "The node shows each face's score after a run.",
        nodes=[_load(1), (2, "FaceRefineFaceCrop", 1, 0, {}), (3, "FaceRefineQualityScore", 2, 0, {}),
               (4, "PreviewAny", 3, 0, {})],
        links=[(1, "IMAGE", 2, "image"), (2, "face_crops", 3, "face_crops"), (3, "report", 4, "source")]),
    "03_codebook_lookup": dict(
        note="Codebook Lookup with the quality slider. The restorer list holds the embedded compact model "
             "and the files in models/facerestore_models (CodeFormer, GFPGAN, RestoreFormer++). "
             "The node shows each face's quality before and after.",
        nodes=[_load(1), (2, "FaceRefineFaceCrop", 1, 0, {}), (3, "FaceRefineRestorerLoader", 1, 1, {}),
               (4, "FaceRefineCodebookLookup", 2, 0, {}), (5, "FaceRefinePasteBack", 3, 0, {}),
               (6, "SaveImage", 4, 0, {"filename_prefix": "facerefine/lookup"})],
        links=[(1, "IMAGE", 2, "image"), (2, "face_crops", 4, "face_crops"), (3, "restorer", 4, "restorer"),
               (1, "IMAGE", 5, "image"), (4, "face_crops", 5, "face_crops"), (5, "image", 6, "images")]),
    "04_identity_refine": dict(
        note="Identity Latent Refine (CLR-Face): re-noises the lookup latent and denoises it with the "
             "latent prior while ArcFace pulls the identity features toward the target (a reference "
             "photo when connected).",
        nodes=[_load(1), (2, "FaceRefineFaceCrop", 1, 0, {}), (3, "FaceRefineRestorerLoader", 1, 1, {}),
               (4, "FaceRefineCodebookLookup", 2, 0, {}), (5, "FaceRefineLatentPriorLoader", 2, 1, {}),
               (6, "FaceRefineIdModelLoader", 2, 2, {}), (7, "FaceRefineIdentityLatentRefine", 3, 0, {}),
               (8, "FaceRefineCropsToImage", 4, 0, {}), (9, "PreviewImage", 5, 0, {})],
        links=[(1, "IMAGE", 2, "image"), (2, "face_crops", 4, "face_crops"), (3, "restorer", 4, "restorer"),
               (4, "face_crops", 7, "face_crops"), (4, "face_latent", 7, "face_latent"),
               (3, "restorer", 7, "restorer"), (5, "latent_prior", 7, "latent_prior"),
               (6, "id_model", 7, "id_model"), (7, "face_crops", 8, "face_crops"), (8, "crops", 9, "images")]),
    "05_paste_back": dict(
        note="Crop and paste back with no restoration: the round trip leaves the image as it was "
             "(outside the mask bit-identical). Paste Back shows a drag-to-compare widget after a run.",
        nodes=[_load(1), (2, "FaceRefineFaceCrop", 1, 0, {}), (3, "FaceRefinePasteBack", 2, 0, {}),
               (4, "SaveImage", 3, 0, {"filename_prefix": "facerefine/paste"}),
               (5, "MaskToImage", 3, 1, {}), (6, "PreviewImage", 4, 1, {})],
        links=[(1, "IMAGE", 2, "image"), (1, "IMAGE", 3, "image"), (2, "face_crops", 3, "face_crops"),
               (3, "image", 4, "images"), (3, "mask", 5, "mask"), (5, "IMAGE", 6, "images")]),
    "06_edit_crops": dict(
        note="FACE_CROPS <-> IMAGE converters: edit the aligned faces with any image node (here a "
             "sharpen) and paste them back.",
        nodes=[_load(1), (2, "FaceRefineFaceCrop", 1, 0, {}), (3, "FaceRefineCropsToImage", 2, 0, {}),
               (4, "ImageSharpen", 3, 0, {}), (5, "FaceRefineImageToCrops", 4, 0, {}),
               (6, "FaceRefinePasteBack", 5, 0, {}), (7, "SaveImage", 6, 0, {"filename_prefix": "facerefine/edit"})],
        links=[(1, "IMAGE", 2, "image"), (2, "face_crops", 3, "face_crops"), (3, "crops", 4, "image"),
               (4, "IMAGE", 5, "crops"), (2, "face_crops", 5, "face_crops"), (1, "IMAGE", 6, "image"),
               (5, "face_crops", 6, "face_crops"), (6, "image", 7, "images")]),
    "07_full_chain": dict(
        note="The whole chain: crop -> quality score -> codebook lookup (quality slider) -> identity "
             "refine -> paste back.",
        nodes=[_load(1), (2, "FaceRefineFaceCrop", 1, 0, {}), (3, "FaceRefineRestorerLoader", 1, 1, {}),
               (10, "FaceRefineLoadIQA", 1, 2, {}), (11, "FaceRefineQualityScore", 2, 0, {}),
               (4, "FaceRefineCodebookLookup", 3, 0, {}), (5, "FaceRefineLatentPriorLoader", 3, 1, {}),
               (6, "FaceRefineIdModelLoader", 3, 2, {}), (7, "FaceRefineIdentityLatentRefine", 4, 0, {}),
               (8, "FaceRefinePasteBack", 5, 0, {}),
               (9, "SaveImage", 6, 0, {"filename_prefix": "facerefine/chain"})],
        links=[(1, "IMAGE", 2, "image"), (2, "face_crops", 11, "face_crops"), (10, "iqa", 11, "iqa"),
               (11, "face_crops", 4, "face_crops"), (3, "restorer", 4, "restorer"), (10, "iqa", 4, "iqa_model"),
               (4, "face_crops", 7, "face_crops"), (4, "face_latent", 7, "face_latent"),
               (3, "restorer", 7, "restorer"), (5, "latent_prior", 7, "latent_prior"),
               (6, "id_model", 7, "id_model"), (1, "IMAGE", 8, "image"), (7, "face_crops", 8, "face_crops"),
               (8, "image", 9, "images")]),
    "08_restore_all_in_one": dict(
        note="FaceRefine Restore (all-in-one): the whole chain in one node. Pick a restorer (the embedded "
             "compact model, or CodeFormer / GFPGAN / RestoreFormer++ from models/facerestore_models); "
             "refine_steps > 0 adds the identity refine.",
        nodes=[_load(1), (2, "FaceRefineRestore", 1, 0, {}),
               (3, "SaveImage", 2, 0, {"filename_prefix": "facerefine/restore"}), (4, "PreviewAny", 2, 1, {})],
        links=[(1, "IMAGE", 2, "image"), (2, "image", 3, "images"), (2, "report", 4, "source")]),
    "09_restore_video": dict(
        note="Video: ComfyUI's own Load Video -> Get Video Components gives the frames (an IMAGE batch), the "
             "audio and the frame rate. FaceRefine Restore Video tracks each face across the frames and "
             "restores it with the previous frames' result carried along the track (no flicker), a chunk of "
             "frames at a time; Create Video + Save Video write the clip with the source's fps and audio. "
             "The whole clip is held in memory as frames: for long clips, load and restore it in segments.",
        nodes=[(1, "LoadVideo", 0, 0, {"file": EXAMPLE_VIDEO}), (2, "GetVideoComponents", 1, 0, {}),
               (3, "FaceRefineRestoreVideo", 2, 0, {}), (4, "CreateVideo", 3, 0, {}),
               (5, "SaveVideo", 4, 0, {"filename_prefix": "facerefine/video"}), (6, "PreviewAny", 3, 1, {})],
        links=[(1, "VIDEO", 2, "video"), (2, "images", 3, "images"), (2, "fps", 3, "fps"),
               (3, "images", 4, "images"), (2, "audio", 4, "audio"), (2, "fps", 4, "fps"),
               (4, "VIDEO", 5, "video"), (3, "report", 6, "source")]),
}

# Widget values that differ from the node defaults (per node type, all workflows).
OVERRIDES = {
    "FaceRefineRestorerLoader": {"restorer_name": RESTORER_FILE},
    "FaceRefineRestore": {"restorer": RESTORER_FILE},
    "FaceRefineRestoreVideo": {"restorer": RESTORER_FILE},
}


def _widget_names(info: dict) -> list[tuple[str, list]]:
    out = []
    for section in ("required", "optional"):
        for name, spec in (info["input"].get(section) or {}).items():
            kind = spec[0]
            if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                out.append((name, spec))
    return out


def _default(spec):
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    if "default" in opts:
        return opts["default"]
    if isinstance(kind, list):
        return kind[0] if kind else ""
    if kind == "COMBO":
        return (opts.get("options") or [""])[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[kind]


def build(name: str, spec: dict, object_info: dict) -> dict:
    nodes_out, links_out = [], []
    by_id = {}
    for order, (nid, ntype, col, row, values) in enumerate(spec["nodes"]):
        info = object_info[ntype]
        widgets = []
        values = {**OVERRIDES.get(ntype, {}), **values}
        for wname, wspec in _widget_names(info):
            widgets.append(values.get(wname, _default(wspec)))
            opts = wspec[1] if len(wspec) > 1 and isinstance(wspec[1], dict) else {}
            if opts.get("control_after_generate") or (wspec[0] == "INT" and wname in ("seed", "noise_seed")):
                widgets.append("fixed")
            if opts.get("image_upload"):
                widgets.append("image")
            if opts.get("video_upload"):
                widgets.append("video")
        sockets = [(n, s[0]) for sec in ("required", "optional") for n, s in (info["input"].get(sec) or {}).items()
                   if not (isinstance(s[0], list) or s[0] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"))]
        outputs = list(zip(info.get("output_name") or info["output"], info["output"]))
        height = 46 + 24 * len(widgets) + 22 * max(len(sockets), len(outputs))
        if ntype in ("LoadImage", "LoadVideo"):
            height = 330
        column_rows = [n for n in spec["nodes"] if n[2] == col and n[3] < row]
        y = 40 + sum(by_id[n[0]]["size"][1] + 60 for n in column_rows)
        node = {"id": nid, "type": ntype, "pos": [40 + COL * col, y], "size": [320, height],
                "flags": {}, "order": order, "mode": 0,
                "inputs": [{"name": n, "type": t if isinstance(t, str) else "*", "link": None} for n, t in sockets],
                "outputs": [{"name": n, "type": t, "links": [], "slot_index": k}
                            for k, (n, t) in enumerate(outputs)],
                "properties": {"Node name for S&R": ntype}, "widgets_values": widgets}
        nodes_out.append(node)
        by_id[nid] = node
    for lid, (src, out_name, dst, in_name) in enumerate(spec["links"], start=1):
        s, d = by_id[src], by_id[dst]
        slot = next(k for k, o in enumerate(s["outputs"]) if o["name"] == out_name)
        s["outputs"][slot]["links"].append(lid)
        if all(i["name"] != in_name for i in d["inputs"]):  # a widget driven by a link (e.g. fps): the front-end adds an input socket for it
            d["inputs"].append({"name": in_name, "type": s["outputs"][slot]["type"], "widget": {"name": in_name},
                                "link": None})
        dslot = next(k for k, i in enumerate(d["inputs"]) if i["name"] == in_name)
        d["inputs"][dslot]["link"] = lid
        links_out.append([lid, src, slot, dst, dslot, s["outputs"][slot]["type"]])
    note_id = max(by_id) + 1
    nodes_out.append({"id": note_id, "type": NOTE, "pos": [40, -150], "size": [700, 120], "flags": {},
                      "order": len(nodes_out), "mode": 0, "inputs": [], "outputs": [],
                      "properties": {"text": ""}, "widgets_values": [spec["note"]],
                      "color": "#432", "bgcolor": "#653"})
    return {"last_node_id": note_id, "last_link_id": len(links_out), "nodes": nodes_out, "links": links_out,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.7, "offset": [40, 230]}}, "version": 0.4}


def thumbnails(server, paths: list[Path]) -> None:
    """<name>.jpg next to each workflow: the graph as the template browser's thumbnail."""
    import io

    from PIL import Image
    from playwright.sync_api import sync_playwright
    server.post("/settings/Comfy.TutorialCompleted", True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                    args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1920, "height": 1000})
        page.goto(server.url, wait_until="domcontentloaded")
        page.wait_for_function("() => window.app && window.app.graph && window.app.extensions?.length > 0",
                               timeout=120_000)
        for path in paths:
            page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", json.loads(path.read_text()))
            page.wait_for_timeout(500)
            png = page.screenshot(clip={"x": 48, "y": 110, "width": 1872, "height": 820})
            img = Image.open(io.BytesIO(png)).convert("RGB")
            img.thumbnail((768, 768))
            img.save(path.with_suffix(".jpg"), quality=80, optimize=True)
            print("wrote", path.with_suffix(".jpg").relative_to(REPO))
        browser.close()


def main() -> None:
    sys.path.insert(0, str(HERE))
    import tempfile

    import comfy_engine
    engine = comfy_engine.install_engine()
    server = comfy_engine.ComfyServer(engine, Path(tempfile.mkdtemp(prefix="facerefine-wf-"))).start()
    try:
        info = server.object_info()
        OUT.mkdir(exist_ok=True)
        written = []
        only = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--only=")]
        for name, spec in SPECS.items():
            if only and name not in only:
                continue
            missing = {n[1] for n in spec["nodes"]} - set(info)
            if missing:
                print(f"skip {name}: nodes not registered: {sorted(missing)}")
                continue
            path = OUT / f"{name}.json"
            path.write_text(json.dumps(build(name, spec, info), indent=1) + "\n")
            written.append(path)
            print("wrote", path.relative_to(REPO))
        if "--no-thumbnails" not in sys.argv:
            thumbnails(server, written)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
