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


def _open(browser, server, errors: list, viewport=(1920, 1000)):
    """A fresh browser context on the ComfyUI page, once our extension has registered."""
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    page = context.new_page()
    page.on("console", lambda m: errors.append(f"console.error: {m.text} at {m.location.get('url', '')}")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e} {e.stack or ''}"))
    page.goto(server.url, wait_until="domcontentloaded", timeout=120_000)
    page.wait_for_function("() => window.app && window.app.graph && window.app.extensions?.length > 0",
                           timeout=120_000)
    page.wait_for_function("() => window.app.extensions.some(e => e.name === 'FaceRefine.widgets')",
                           timeout=60_000)
    return context, page


def _load(page, workflow: dict) -> None:
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)


def test_extension_loads_and_ui_workflows_convert_like_the_front_end(browser, prepared):
    server = prepared
    errors: list[str] = []
    our_js: list[int] = []
    context, page = _open(browser, server, errors)
    served = page.evaluate("async () => (await (await fetch('/extensions')).json())")
    assert any(u.endswith("/facerefine.js") for u in served)
    status = page.evaluate("async (u) => (await fetch(u)).status",
                           next(u for u in served if u.endswith("/facerefine.js")))
    our_js.append(status)
    assert our_js == [200]
    # the front-end's own UI -> API conversion agrees with the one the workflow tests use
    info = server.object_info()
    for path in sorted((REPO / "example_workflows").glob("*.json")):
        wf = json.loads(path.read_text())
        _load(page, wf)
        api = page.evaluate("async () => (await window.app.graphToPrompt()).output")
        assert _normalise(api, info) == _normalise(comfy_engine.ui_to_api(wf, info), info), path.name
    context.close()
    _assert_no_errors_of_ours(errors)


def test_full_chain_in_the_browser_shows_quality_and_compare_widget(browser, prepared, tmp_path):
    from test_comfy_workflows import TEST_WIDGETS
    server = prepared
    server.post("/settings/Comfy.TutorialCompleted", True)  # no template browser pop-up on first visit
    workflow = json.loads((REPO / "example_workflows" / "07_full_chain.json").read_text())
    errors: list[str] = []
    context, page = _open(browser, server, errors)
    _load(page, workflow)
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
    try:
        page.wait_for_function(
            """(id) => { const n = window.app.graph.getNodeById(id);
                         return n && n.widgets && n.widgets.some(w => w.name === 'facerefine_compare'); }""",
            arg=paste_id, timeout=300_000)
    except Exception:
        page.screenshot(path=str(tmp_path / "timeout.png"))
        status = [v["status"] for v in server.get("/history").values()]
        raise AssertionError(f"no compare widget; history: {json.dumps(status)[:3000]}\n"
                             f"errors: {errors}\n{server.log_tail(3000)}")
    # both images of the compare widget load from /view
    page.wait_for_function(
        """() => { const imgs = document.querySelectorAll('.facerefine-compare img');
                   return imgs.length >= 2 && [...imgs].every(i => i.complete && i.naturalWidth > 0); }""",
        timeout=60_000)
    quality = page.evaluate(
        """(id) => window.app.graph.getNodeById(id).widgets.find(w => w.name === 'facerefine_quality')
                   ?.element?.textContent""", lookup_id)
    assert quality and "face 0: " in quality and "→" in quality, quality

    # drag across the widget: the split follows the pointer
    box = page.locator(".facerefine-compare").first.bounding_box()
    assert box and box["width"] > 50 and box["height"] > 50
    hit = page.evaluate("([x, y]) => { const e = document.elementFromPoint(x, y); "
                        "return e ? String(e.className || e.tagName) : null; }",
                        [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2])
    assert "facerefine" in (hit or ""), f"the compare widget is covered by {hit}"
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] / 2, steps=4)
    page.mouse.up()
    split = float(page.locator(".facerefine-compare").first.get_attribute("data-split"))
    assert 20 < split < 40, split

    shot = tmp_path / "comfyui_graph.png"
    page.evaluate("""() => {  // dismiss the front-end's 'Nodes 2.0' banner for a clean picture
        document.querySelector('button i[class*="lucide--x"]')?.closest('button')?.click();
    }""")
    page.wait_for_timeout(500)
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("FACEREFINE_SCREENSHOT"):
        shutil.copy(shot, os.environ["FACEREFINE_SCREENSHOT"])
    context.close()
    _assert_no_errors_of_ours(errors)


def _assert_no_errors_of_ours(errors: list[str]) -> None:
    """Errors from our extension, our files or our routes fail the test. ComfyUI's own offline-setup
    errors (user.css, favicon, api.comfy.org look-ups, the core template index; present without
    our pack too) are printed only."""
    offline = ("net::ERR_NAME_NOT_RESOLVED", "api.comfy.org")  # the front-end's registry look-ups (no network)
    ours = [e for e in errors if "facerefine" in e.lower() and not any(o in e for o in offline)]
    others = [e for e in errors if e not in ours]
    if others:
        print("ComfyUI front-end errors not caused by FaceRefine:\n  " + "\n  ".join(others))
    assert not ours, "console errors from FaceRefine:\n" + "\n".join(ours)


def _normalise(prompt: dict, info: dict) -> dict:
    """Class and declared inputs (front-end-only widgets such as PreviewAny's text box are dropped)."""
    out = {}
    for k, v in prompt.items():
        spec = info[v["class_type"]]["input"]
        declared = {**(spec.get("required") or {}), **(spec.get("optional") or {})}
        out[k] = {"class_type": v["class_type"], "inputs": {n: x for n, x in v["inputs"].items() if n in declared}}
    return out
