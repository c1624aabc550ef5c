// PinStream's frontend extension: shows the text each PinStream node returns (the
// loaders' and offload nodes' one-line plan, the Stats node's report) inside the node,
// in a read-only multiline text box sized to the text.
//
// ComfyUI serves this file because the pack's __init__.py exports WEB_DIRECTORY = "./web"
// (read by nodes.load_custom_node for classic and V3 packs alike); /extensions lists it
// and the frontend imports it. It uses only what every 1.x frontend has (checked with 1.32 and
// 1.47, in the canvas renderer and in Nodes 2.0, where the frontend draws the box itself):
// app.registerExtension, a node type's onExecuted, ComfyWidgets.STRING (from
// window.comfyAPI, else node.addDOMWidget), and the onNodeOutputsUpdated hook, which hands
// back the outputs when a workflow tab is shown again (the nodes are rebuilt without the text).

import { app } from "../../../scripts/app.js";

const EXTENSION = "PinStream.TextDisplay";
// Keep in step with comfy_nodes/nodes.py SPECS (tests/ui/test_web_extension.py checks it).
export const PINSTREAM_NODES = [
  "PinStreamLoadDiffusionModel",
  "PinStreamLoadCheckpoint",
  "PinStreamLoadCLIP",
  "PinStreamLoadVAE",
  "PinStreamOffloadModel",
  "PinStreamOffloadCLIP",
  "PinStreamOffloadWanVideoModel",
  "PinStreamLoadFlashPortrait",
  "PinStreamOffloadPipeline",
  "PinStreamStats",
];
export const WIDGET_NAME = "pinstream_text";

const FONT_PX = 12;
const LINE_PX = 16;
const CHAR_PX = FONT_PX * 0.62; // monospace advance, a little generous
const MIN_WIDTH = 360; // the width the Stats node widens to, at least...
const MAX_WIDTH = 640; // ...and at most: longer lines wrap
const MAX_ROWS = 30; // taller texts scroll

function textOf(message) {
  const t = message?.text;
  if (t == null) return null;
  return (Array.isArray(t) ? t : [t]).map(String).join("\n");
}

function styleTextArea(el) {
  if (!el) return;
  el.readOnly = true;
  el.spellcheck = false;
  el.style.fontFamily = "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace";
  el.style.fontSize = `${FONT_PX}px`;
  el.style.lineHeight = `${LINE_PX}px`;
  el.style.whiteSpace = "pre-wrap";
  el.style.overflowWrap = "anywhere";
  el.style.opacity = "0.9";
  el.dataset.pinstream = "text";
}

function makeWidget(node) {
  const ComfyWidgets = window.comfyAPI?.widgets?.ComfyWidgets;
  const before = [node.size[0], node.size[1]]; // frontends enlarge a node for a new text box; fitNode sizes it
  let widget = null;
  if (ComfyWidgets?.STRING) {
    widget = ComfyWidgets.STRING(node, WIDGET_NAME, ["STRING", { multiline: true }], app)?.widget ?? null;
  } else if (typeof node.addDOMWidget === "function") {
    const el = document.createElement("textarea");
    el.className = "comfy-multiline-input";
    widget = node.addDOMWidget(WIDGET_NAME, "customtext", el, {
      getValue: () => el.value,
      setValue: (v) => { el.value = v; },
    });
    widget.element ??= el;
  }
  if (!widget) {
    console.warn(`[${EXTENSION}] this ComfyUI frontend offers neither ComfyWidgets.STRING nor addDOMWidget; ` +
                 "the PinStream text is in the node's output (queue history) only");
    return null;
  }
  // Display only: not saved in the workflow, not sent with the prompt, not editable.
  widget.label = "PinStream"; // the caption Nodes 2.0 shows above the box
  widget.serialize = false;
  widget.options = widget.options ?? {};
  widget.options.serialize = false;
  widget.options.read_only = true;
  styleTextArea(widget.element ?? widget.inputEl);
  if (node.size[0] !== before[0] || node.size[1] !== before[1]) {
    if (typeof node.setSize === "function") node.setSize(before);
    else node.size = before;
  }
  return widget;
}

// Rows the text takes in a box `width` wide (long lines wrap).
function rowsAt(lines, width) {
  const perRow = Math.max(20, Math.floor((width - 24) / CHAR_PX));
  return lines.reduce((n, l) => n + Math.max(1, Math.ceil(l.length / perRow)), 0);
}

function fitNode(node, widget, text) {
  const lines = text.split("\n");
  const others = (node.widgets ?? []).filter((w) => w !== widget).length;
  // A node with widgets of its own (a loader) keeps the width it has, and its text wraps;
  // a node with none (Stats) widens for its longest line, up to MAX_WIDTH.
  let width = node.size[0];
  if (!others) {
    const longest = Math.max(...lines.map((l) => l.length));
    width = Math.max(width, Math.min(MAX_WIDTH, Math.max(MIN_WIDTH, Math.ceil(longest * CHAR_PX) + 32)));
  }
  const textHeight = Math.min(rowsAt(lines, width), MAX_ROWS) * LINE_PX + 12;
  if (widget.options) {
    widget.options.getMinHeight = () => textHeight;
    widget.options.getMaxHeight = () => textHeight + 4 * LINE_PX;
  }
  // LiteGraph's size is the node body (the title bar is above it): the slots and the other
  // widgets, then the text box. The node only grows.
  const sockets = (node.inputs ?? []).filter((i) => !i.widget).length; // not the widgets' own input slots
  const slots = Math.max(sockets, node.outputs?.length ?? 0);
  const height = (slots + others) * 24 + 12 + textHeight + 8;
  const size = [width, Math.max(height, node.size[1])];
  if (size[0] !== node.size[0] || size[1] !== node.size[1]) {
    if (typeof node.setSize === "function") node.setSize(size);
    else node.size = size;
  }
  if (app.canvas?.setDirty) app.canvas.setDirty(true, true);
  else app.graph?.setDirtyCanvas?.(true, true);
}

export function showText(node, text) {
  if (text == null) return;
  let widget = node.widgets?.find((w) => w.name === WIDGET_NAME);
  if (!widget) widget = makeWidget(node);
  if (!widget) return;
  widget.value = text;
  const el = widget.element ?? widget.inputEl;
  if (el && el.value !== text) el.value = text;
  fitNode(node, widget, text);
}

app.registerExtension({
  name: EXTENSION,
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!PINSTREAM_NODES.includes(nodeData?.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      showText(this, textOf(message));
    };
  },
  // Outputs handed back for the nodes of the graph being shown (a workflow tab switched to).
  onNodeOutputsUpdated(outputs) {
    const graph = app.rootGraph ?? app.graph;
    for (const [id, output] of Object.entries(outputs ?? {})) {
      if (String(id).includes(":")) continue; // a node inside a subgraph
      const node = graph?.getNodeById?.(Number(id)) ?? graph?.getNodeById?.(id);
      if (node && PINSTREAM_NODES.includes(node.comfyClass ?? node.type)) showText(node, textOf(output));
    }
  },
});
