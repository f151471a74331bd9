"""The ComfyUI page in headless Chromium (Debian chromium, driven by Playwright).

Loads the page served by the test ComfyUI server, checks that our web extension
registers without console errors, runs the all-in-one example workflow through
the front-end itself (it converts the UI graph to the API format) and checks the
drag-to-compare widget and the quality read-out. A screenshot is saved in the
test's tmp dir (``FACEREFINE_SCREENSHOT=path`` also copies it there, e.g. for the README).
"""
import json
import os
import shutil
from pathlib import Path

import pytest

import comfy_engine

pytestmark = [pytest.mark.engine, pytest.mark.browser]

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("FACEREFINE_CHROMIUM", "/usr/bin/chromium")
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (python driver)")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing: apt-get install -y chromium chromium-driver")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def prepared():
    from test_comfy_workflows import prepare_server
    return prepare_server()


def test_page_extension_and_compare_widget(browser, prepared, tmp_path):
    from test_comfy_workflows import TEST_WIDGETS
    server = prepared
    workflow = json.loads((REPO / "example_workflows" / "07_full_chain.json").read_text())
    errors: list[str] = []
    page = browser.new_page(viewport={"width": 1920, "height": 1000})
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    our_js = []
    page.on("response", lambda r: our_js.append(r.status) if r.url.endswith("/facerefine.js") else None)

    page.goto(server.url, wait_until="domcontentloaded", timeout=120_000)
    page.wait_for_function("() => window.app && window.app.graph && window.app.extensions?.length > 0",
                           timeout=120_000)
    page.wait_for_function(
        "() => window.app.extensions.some(e => e.name === 'FaceRefine.widgets')", timeout=60_000)
    assert our_js == [200]

    # the front-end's own UI -> API conversion agrees with the one the workflow tests use
    info = server.object_info()
    for path in sorted((REPO / "example_workflows").glob("*.json")):
        wf = json.loads(path.read_text())
        page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", wf)
        api = page.evaluate("async () => (await window.app.graphToPrompt()).output")
        mine = comfy_engine.ui_to_api(wf, info)
        assert _normalise(api) == _normalise(mine), path.name

    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)
    paste_id = next(n["id"] for n in workflow["nodes"] if n["type"] == "FaceRefinePasteBack")
    lookup_id = next(n["id"] for n in workflow["nodes"] if n["type"] == "FaceRefineCodebookLookup")
    page.evaluate("""(sizes) => {  // CPU-sized settings, set on the widgets like a user would
        for (const node of window.app.graph.nodes)
            for (const [name, value] of Object.entries(sizes[node.type] || {})) {
                const w = node.widgets?.find(w => w.name === name);
                if (w) w.value = value;
            }
    }""", TEST_WIDGETS)
    page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
    page.wait_for_function(
        """(id) => { const n = window.app.graph.getNodeById(id);
                     return n && n.widgets && n.widgets.some(w => w.name === 'facerefine_compare'); }""",
        arg=paste_id, timeout=240_000)
    # both images of the compare widget load from /view
    page.wait_for_function(
        """() => { const imgs = document.querySelectorAll('.facerefine-compare img');
                   return imgs.length >= 2 && [...imgs].every(i => i.complete && i.naturalWidth > 0); }""",
        timeout=60_000)
    quality = page.evaluate(
        """(id) => window.app.graph.getNodeById(id).widgets.find(w => w.name === 'facerefine_quality')
                   ?.element?.textContent""", lookup_id)
    assert quality and quality.startswith("face 0:") and "→" in quality, quality
    # drag across the widget: the split follows the pointer
    box = page.locator(".facerefine-compare").first.bounding_box()
    assert box and box["width"] > 50 and box["height"] > 50
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] / 2, steps=4)
    page.mouse.up()
    split = float(page.locator(".facerefine-compare").first.get_attribute("data-split"))
    assert 15 < split < 35, split

    shot = tmp_path / "comfyui_graph.png"
    page.wait_for_timeout(300)
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("FACEREFINE_SCREENSHOT"):
        shutil.copy(shot, os.environ["FACEREFINE_SCREENSHOT"])
    page.close()
    ours = [e for e in errors if "facerefine" in e.lower()]
    assert not ours, "\n".join(errors)
    assert not errors, "console errors on the ComfyUI page:\n" + "\n".join(errors)


def _normalise(prompt: dict) -> dict:
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}
