// FaceRefine front-end: per-face quality (before -> after) on nodes that report it,
// and a drag-to-compare before/after widget on Paste Back / Restore (all-in-one).
// Uses only ComfyUI's extension API: app.registerExtension, beforeRegisterNodeDef,
// onExecuted, node.addDOMWidget and api.apiURL.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const QUALITY = "facerefine_quality";
const COMPARE = "facerefine_compare";

function viewUrl(entry) {
  const q = new URLSearchParams({
    filename: entry.filename,
    subfolder: entry.subfolder || "",
    type: entry.type || "temp",
  });
  return api.apiURL(`/view?${q}`);
}

function formatScore(s) {
  if (!s || s.normalized === null || s.normalized === undefined) return "–";
  return s.normalized.toFixed(3);
}

function ensureWidget(node, name, build, minHeight) {
  let widget = node.widgets?.find((w) => w.name === name);
  if (!widget) {
    const el = build();
    widget = node.addDOMWidget(name, name, el, {
      serialize: false,
      hideOnZoom: false,
      getMinHeight: () => minHeight,
    });
    widget.serializeValue = () => undefined;
  }
  return widget;
}

function showQuality(node, lines) {
  const widget = ensureWidget(node, QUALITY, () => {
    const el = document.createElement("pre");
    el.className = "facerefine-quality";
    Object.assign(el.style, {
      margin: "0", padding: "4px 6px", font: "12px monospace", whiteSpace: "pre",
      overflow: "auto", color: "var(--input-text, #ddd)", background: "var(--comfy-input-bg, #222)",
      borderRadius: "4px",
    });
    return el;
  }, 40 + 16 * Math.min(lines.length, 8));
  const text = lines.map((l) => {
    if (l.before && l.after) return `face ${l.face}: ${formatScore(l.before)} → ${formatScore(l.after)}`;
    return `face ${l.face}: ${formatScore(l.after || l.before)}`;
  });
  const first = lines.find((l) => l.after || l.before);
  const metric = first ? (first.after || first.before).metric : "";
  const header = metric ? `quality (${metric}, 0..1)` : "quality";
  widget.element.textContent = text.length ? [header, ...text].join("\n") : "no faces";
  node.setDirtyCanvas?.(true, true);
}

function buildCompare() {
  const el = document.createElement("div");
  el.className = "facerefine-compare";
  Object.assign(el.style, { position: "relative", width: "100%", height: "100%", overflow: "hidden",
                            cursor: "ew-resize", userSelect: "none", touchAction: "none" });
  const before = document.createElement("img");
  const after = document.createElement("img");
  const line = document.createElement("div");
  for (const img of [before, after]) {
    img.draggable = false;
    Object.assign(img.style, { position: "absolute", inset: "0", width: "100%", height: "100%",
                               objectFit: "contain", pointerEvents: "none" });
  }
  before.className = "facerefine-before";
  after.className = "facerefine-after";
  Object.assign(line.style, { position: "absolute", top: "0", bottom: "0", width: "2px",
                              background: "#fff", boxShadow: "0 0 3px #000", pointerEvents: "none" });
  el.append(before, after, line);
  const setSplit = (fraction) => {
    const pct = Math.max(0, Math.min(1, fraction)) * 100;
    after.style.clipPath = `inset(0 0 0 ${pct}%)`;  // left: before, right: after
    line.style.left = `calc(${pct}% - 1px)`;
    el.dataset.split = pct.toFixed(1);
  };
  const onPointer = (e) => {
    if (e.type === "pointermove" && e.buttons === 0 && e.pointerType !== "mouse") return;
    const rect = el.getBoundingClientRect();
    if (rect.width > 0) setSplit((e.clientX - rect.left) / rect.width);
  };
  el.addEventListener("pointerdown", (e) => { el.setPointerCapture?.(e.pointerId); onPointer(e); });
  el.addEventListener("pointermove", onPointer);
  el.setSplit = setSplit;
  setSplit(0.5);
  return el;
}

function showCompare(node, pairs) {
  if (!pairs.length) return;
  const widget = ensureWidget(node, COMPARE, buildCompare, 220);
  const pair = pairs[0];
  const [before, after] = widget.element.querySelectorAll("img");
  before.src = viewUrl(pair.before);
  after.src = viewUrl(pair.after);
  if (node.size[1] < 320) node.setSize([Math.max(node.size[0], 260), 320]);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "FaceRefine.widgets",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!String(nodeData?.category || "").startsWith("FaceRefine")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (message?.[QUALITY]) showQuality(this, message[QUALITY]);
      if (message?.[COMPARE]) showCompare(this, message[COMPARE]);
    };
  },
});
