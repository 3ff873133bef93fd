// The page of `python -m pipeline serve`: translates as you type, lists the n-best hypotheses
// and draws the cross-attention of the shown translation as an SVG heatmap (rows: the target
// token each decoder step predicts, columns: source tokens). Plain JavaScript, no libraries.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG_NS = "http://www.w3.org/2000/svg";
const CELL = 30; // px per heatmap cell
const MAX_BEAM = 8;

let latest = 0; // number of the newest request: answers to older ones are dropped
let maps = null; // the last /attention answer
let timer = null;

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.className = isError ? "error" : "muted";
}

function option(value, label) {
  const element = document.createElement("option");
  element.value = String(value);
  element.textContent = label;
  return element;
}

async function init() {
  for (let beam = 1; beam <= MAX_BEAM; beam++) $("beam").append(option(beam, String(beam)));
  try {
    const response = await fetch("/health");
    const health = await response.json();
    $("src-lang").textContent = `(${health.languages.source})`;
    $("tgt-lang").textContent = `(${health.languages.target})`;
    $("beam").value = String(Math.min(health.model.decoding.beam, MAX_BEAM));
    const config = health.model.config;
    $("model-info").textContent = `${health.languages.source}→${health.languages.target} · `
      + `${health.model.checkpoint.split(/[\\/]/).pop()} (d_model ${config.d_model}, `
      + `${config.encoder_layers}+${config.decoder_layers} layers) · commit ${health.commit}`;
    $("model-info").title = health.model.checkpoint;
  } catch (error) {
    $("model-info").textContent = "";
    setStatus(`server not reachable: ${error.message}`, true);
  }
}

function clearOutput() {
  maps = null;
  $("translation").textContent = "";
  $("nbest").replaceChildren();
  draw();
  setStatus("");
}

async function translate() {
  clearTimeout(timer);
  const id = ++latest;
  const text = $("source").value;
  if (!text.trim()) {
    clearOutput();
    return;
  }
  setStatus("translating…");
  const beam = Number($("beam").value);
  try {
    const result = await post("/translate", { text, beam, nbest: beam });
    if (id !== latest) return;
    $("translation").textContent = result.translation;
    $("nbest").replaceChildren(...result.nbest[0].map((hyp) => {
      const item = document.createElement("li");
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = hyp.score.toFixed(3);
      item.append(score, hyp.text);
      return item;
    }));
    // The heatmap explains the translation shown (beam search), not a separate greedy one.
    const request = { text, self_attention: false };
    if (result.translation.trim()) request.target = result.translation;
    const attention = await post("/attention", request);
    if (id !== latest) return;
    maps = attention;
    fillSelects();
    draw();
    const warnings = [...result.warnings, ...attention.warnings];
    setStatus(warnings.join(" "), warnings.length > 0);
  } catch (error) {
    if (id === latest) setStatus(error.message, true);
  }
}

function fillSelects() {
  const layer = $("layer"), head = $("head");
  if (layer.options.length !== maps.layers) {
    layer.replaceChildren(...maps.cross.map((_, i) => option(i, String(i + 1))));
    layer.value = String(maps.layers - 1); // the last layer, as the PNG heatmaps show by default
  }
  if (head.options.length !== maps.heads + 1) {
    head.replaceChildren(option("avg", "average"), ...maps.cross[0].map((_, i) => option(i, String(i + 1))));
    head.value = "avg";
  }
}

// (rows x cols) weights of the chosen layer: one head, or the mean over heads.
function chosenWeights() {
  const heads = maps.cross[Number($("layer").value)];
  const head = $("head").value;
  if (head !== "avg") return heads[Number(head)];
  return heads[0].map((row, r) => row.map((_, c) => heads.reduce((sum, h) => sum + h[r][c], 0) / heads.length));
}

// White to dark blue.
function colour(t) {
  const mix = (a, b) => Math.round(a + (b - a) * t);
  return `rgb(${mix(255, 8)}, ${mix(255, 48)}, ${mix(255, 107)})`;
}

function svgElement(name, attributes, text) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

function draw() {
  const svg = $("heatmap");
  svg.replaceChildren();
  if (!maps) {
    svg.setAttribute("width", 0);
    svg.setAttribute("height", 0);
    return;
  }
  const rows = maps.tgt_out_tokens, cols = maps.src_tokens;
  const weights = chosenWeights();
  const max = Math.max(1e-9, ...weights.flat());
  // Labels first, to measure them: row labels sit left, column labels above, turned 45 degrees.
  const rowLabels = rows.map((token) => svg.appendChild(svgElement("text", { class: "row-label" }, token)));
  const colLabels = cols.map((token) => svg.appendChild(svgElement("text", { class: "col-label" }, token)));
  const width = (labels) => Math.max(0, ...labels.map((label) => label.getComputedTextLength()));
  const left = width(rowLabels) + 12, colExtent = width(colLabels) * Math.SQRT1_2, top = colExtent + 16;
  rowLabels.forEach((label, r) => {
    label.setAttribute("x", left - 6);
    label.setAttribute("y", top + r * CELL + CELL / 2);
    label.setAttribute("text-anchor", "end");
    label.setAttribute("dominant-baseline", "middle");
  });
  colLabels.forEach((label, c) => {
    label.setAttribute("transform", `translate(${left + c * CELL + CELL / 2}, ${top - 6}) rotate(-45)`);
  });
  weights.forEach((row, r) => row.forEach((value, c) => {
    const cell = svgElement("rect", {
      class: "cell", x: left + c * CELL, y: top + r * CELL, width: CELL, height: CELL,
      fill: colour(value / max), "data-row": r, "data-col": c,
    });
    cell.append(svgElement("title", {}, `${rows[r]} ← ${cols[c]}: ${value.toFixed(3)}`));
    svg.append(cell);
  }));
  svg.setAttribute("width", Math.ceil(left + cols.length * CELL + colExtent + 8));
  svg.setAttribute("height", Math.ceil(top + rows.length * CELL + 4));
  svg.dataset.rows = rows.length;
  svg.dataset.cols = cols.length;
}

$("source").addEventListener("input", () => {
  clearTimeout(timer);
  timer = setTimeout(translate, 300);
});
$("source").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) translate();
});
$("go").addEventListener("click", translate);
$("beam").addEventListener("change", translate);
$("layer").addEventListener("change", draw);
$("head").addEventListener("change", draw);
// Labels were measured in the fallback font until the Hangul font arrived: measure again.
document.fonts.addEventListener("loadingdone", draw);
init();
