// The page: pick, drop or paste images; each is scored by POST /score on its own request
// (see api.js for why); the target-FPR control re-scores them through ?target_fpr=.

import { ApiError, getModel, getReport, scoreFile } from "./api.js";
import { byId, num, percent, plural } from "./dom.js";
import { heatValues, modelView } from "./heatmap.js";
import { describeKind, renderModelCard, renderReport } from "./modelcard.js";
import { createCard, drawOverlay, renderEntry, sortEntries } from "./results.js";

const STEPS = 120; // positions of the FPR slider, on a log scale over the calibrated range
const IN_FLIGHT = 4; // requests at once; the service batches concurrent ones
const RETRY_MS = 2000;

const state = {
  model: null,
  fpr: null, // the requested target FPR; null = the service's default
  entries: [],
  order: 0,
  opacity: 0.65,
  sort: "anomalous",
  pasted: 0,
};

const ui = {
  banner: byId("banner"),
  chip: byId("model-summary"),
  dot: byId("ready-dot"),
  dropzone: byId("dropzone"),
  input: byId("file-input"),
  fpr: byId("fpr"),
  fprValue: byId("fpr-value"),
  fprMin: byId("fpr-min"),
  fprMax: byId("fpr-max"),
  fprMeaning: byId("fpr-meaning"),
  fprReset: byId("fpr-reset"),
  thresholdName: byId("primary-threshold-name"),
  threshold: byId("primary-threshold"),
  grid: byId("grid"),
  empty: byId("empty"),
  summary: byId("summary"),
  sort: byId("sort"),
  opacity: byId("opacity"),
  clear: byId("clear"),
  card: byId("card-body"),
  report: byId("report-body"),
  reportLink: byId("report-link"),
};

let modelLoaded;
const modelReady = new Promise((resolve) => {
  modelLoaded = resolve;
});

// -- a small limiter: at most IN_FLIGHT requests at once -----------------------------------

let running = 0;
const waiting = [];

// Runs `task` when a slot is free; a task that became stale while it waited is not run.
async function limited(task, stale) {
  if (running >= IN_FLIGHT) await new Promise((resolve) => waiting.push(resolve));
  running += 1;
  try {
    if (stale()) return null;
    return await task();
  } finally {
    running -= 1;
    const next = waiting.shift();
    if (next) next();
  }
}

// -- the model -----------------------------------------------------------------------------

async function loadModel() {
  try {
    const model = await getModel();
    state.model = model;
    ui.banner.hidden = true;
    ui.dot.dataset.state = "ready";
    const input = model.input;
    ui.chip.textContent = `${model.name} v${model.version} · ${describeKind(model.model)} · ${input.width}×${input.height} ${input.color_mode} · ${model.provider.replace("ExecutionProvider", "")}`;
    renderModelCard(ui.card, model);
    setUpFpr(model);
    modelLoaded();
    loadReport();
  } catch (exc) {
    ui.dot.dataset.state = "down";
    ui.chip.textContent = "model not ready";
    ui.banner.textContent = `The model is not ready: ${exc.message}. Retrying…`;
    ui.banner.hidden = false;
    setTimeout(loadModel, RETRY_MS);
  }
}

async function loadReport() {
  try {
    renderReport(ui.report, ui.reportLink, await getReport());
  } catch (exc) {
    ui.report.textContent = `The training report could not be loaded: ${exc.message}`;
  }
}

// -- the target false-positive rate --------------------------------------------------------

function range() {
  const [low, high] = state.model.target_fpr_range;
  return { low, high, span: Math.log(high / low) };
}

function fprAt(position) {
  const { low, high, span } = range();
  const raw = low * Math.exp((span * position) / STEPS);
  const rounded = Number(raw.toPrecision(2));
  return Math.min(Math.max(rounded, low), high);
}

function positionOf(fpr) {
  const { low, span } = range();
  return Math.round((STEPS * Math.log(fpr / low)) / span);
}

function effectiveFpr() {
  return state.fpr === null ? state.model.target_fpr : state.fpr;
}

function setUpFpr(model) {
  const [low, high] = model.target_fpr_range;
  ui.fpr.max = String(STEPS);
  ui.fpr.disabled = false;
  ui.fprMin.textContent = percent(low);
  ui.fprMax.textContent = percent(high);
  ui.thresholdName.textContent = model.primary_score;
  ui.fpr.value = String(positionOf(effectiveFpr()));
  showFpr();
}

function showFpr() {
  const fpr = effectiveFpr();
  const text = percent(fpr);
  ui.fprValue.textContent = text;
  ui.fpr.setAttribute("aria-valuetext", text);
  ui.fprMeaning.textContent = `Of normal images, about ${text} are flagged as anomalous (false alarms): a lower rate flags fewer normal images and misses more anomalies. Calibrated on ${plural(state.model.calibration.n, "normal image")}.`;
  ui.fprReset.hidden = state.fpr === null;
  showThreshold();
}

function showThreshold() {
  const fpr = effectiveFpr();
  const primary = state.model.primary_score;
  const current = state.entries.find((e) => e.result && e.fpr === fpr);
  let value = null;
  if (current) value = current.result.thresholds[primary];
  else if (state.fpr === null) value = state.model.thresholds[primary];
  ui.threshold.textContent = value === null ? "…" : num(value);
  ui.threshold.dataset.fpr = value === null ? "" : String(fpr);
  ui.threshold.title = value === null ? "derived by the service when an image is scored at this rate" : "";
}

let fprTimer = null;

// Re-score once the control rests: a held arrow key or a drag sends one round, not one per step.
function fprChanged() {
  const fpr = fprAt(Number(ui.fpr.value));
  state.fpr = fpr === state.model.target_fpr ? null : fpr;
  showFpr();
  clearTimeout(fprTimer);
  fprTimer = setTimeout(rescoreAll, 200);
}

function rescoreAll() {
  for (const entry of state.entries) {
    if (entry.result && entry.fpr !== effectiveFpr()) score(entry);
  }
}

// -- scoring ---------------------------------------------------------------------------------

function addFiles(files) {
  const added = [];
  for (const file of files) {
    const entry = {
      file,
      url: URL.createObjectURL(file),
      order: state.order++,
      state: "pending",
      result: null,
      error: null,
      fpr: null,
      maps: {},
      seq: 0,
      opacity: state.opacity,
      rescoring: false,
    };
    state.entries.push(entry);
    ui.grid.append(createCard(entry));
    renderEntry(entry, state.model);
    added.push(entry);
  }
  refresh();
  for (const entry of added) score(entry);
}

async function score(entry) {
  entry.seq += 1;
  const seq = entry.seq;
  const wantMaps = !entry.maps.heat;
  const fpr = state.fpr;
  entry.rescoring = Boolean(entry.result);
  if (entry.result) renderEntry(entry, state.model);
  let answer;
  try {
    answer = await limited(
      () => scoreFile(entry.file, { targetFpr: fpr, heatmap: wantMaps }),
      () => seq !== entry.seq || !state.entries.includes(entry),
    );
    if (answer === null) return; // superseded before it was sent
    await modelReady; // results are shown against the model card's scores
    if (wantMaps && answer.result.heatmap) await decodeMaps(entry, answer.result);
  } catch (exc) {
    if (seq !== entry.seq || !state.entries.includes(entry)) return;
    entry.state = "error";
    entry.rescoring = false;
    entry.error = exc instanceof ApiError ? exc : new ApiError(0, "page_error", String(exc.message || exc));
    renderEntry(entry, state.model || {});
    refresh();
    return;
  }
  if (seq !== entry.seq || !state.entries.includes(entry)) return;
  entry.state = "ok";
  entry.error = null;
  entry.rescoring = false;
  entry.result = answer.result;
  entry.fpr = answer.targetFpr;
  renderEntry(entry, state.model);
  refresh();
  if (reloaded(answer.model)) loadModel();
  else if (entry.fpr !== effectiveFpr()) score(entry); // the control moved meanwhile
}

// The service answered with another model than the card shows (a hot reload or a recalibration).
function reloaded(ref) {
  const m = state.model;
  return Boolean(m) && (ref.name !== m.name || ref.version !== m.version || ref.sha256 !== m.onnx.sha256);
}

async function decodeMaps(entry, result) {
  const heat = await heatValues(result.heatmap);
  const mode = state.model ? state.model.input.color_mode : "L";
  entry.maps = {
    heat,
    view: await modelView(entry.url, heat.width, heat.height, mode),
    heatmapMax: result.heatmap_max,
    reconstruction: result.reconstruction,
  };
}

let sortQueued = false;

function refresh() {
  const n = state.entries.length;
  const flagged = state.entries.filter((e) => e.state === "ok" && e.result.is_anomaly).length;
  const errors = state.entries.filter((e) => e.state === "error").length;
  const pending = state.entries.filter((e) => e.state === "pending" || e.rescoring).length;
  const parts = [plural(n, "image")];
  if (n) parts.push(`${flagged} flagged`);
  if (errors) parts.push(plural(errors, "error"));
  if (pending) parts.push(`${pending} scoring…`);
  ui.summary.textContent = n ? parts.join(" · ") : "No images yet.";
  ui.empty.hidden = n > 0;
  ui.clear.disabled = n === 0;
  if (state.model) showThreshold();
  if (!sortQueued) {
    sortQueued = true;
    requestAnimationFrame(() => {
      sortQueued = false;
      sortEntries(state.entries, state.sort, ui.grid);
    });
  }
}

function clearAll() {
  for (const entry of state.entries) URL.revokeObjectURL(entry.url);
  state.entries = [];
  ui.grid.replaceChildren();
  refresh();
  ui.input.focus();
}

// -- wiring ----------------------------------------------------------------------------------

function imageFiles(list) {
  return [...(list || [])].filter((f) => f instanceof File);
}

ui.input.addEventListener("change", () => {
  addFiles(imageFiles(ui.input.files));
  ui.input.value = ""; // the same file can be picked again
});

for (const type of ["dragenter", "dragover"]) {
  document.addEventListener(type, (event) => {
    if (![...event.dataTransfer.types].includes("Files")) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
    ui.dropzone.classList.add("dragging");
  });
}
document.addEventListener("dragleave", (event) => {
  if (event.relatedTarget === null) ui.dropzone.classList.remove("dragging");
});
document.addEventListener("drop", (event) => {
  ui.dropzone.classList.remove("dragging");
  const files = imageFiles(event.dataTransfer && event.dataTransfer.files);
  if (!files.length) return;
  event.preventDefault();
  addFiles(files);
});
document.addEventListener("paste", (event) => {
  const files = imageFiles(event.clipboardData && event.clipboardData.files).map((file) => {
    state.pasted += 1;
    const ext = (file.type.split("/")[1] || "png").replace("jpeg", "jpg");
    return new File([file], `pasted-${state.pasted}.${ext}`, { type: file.type });
  });
  if (files.length) {
    event.preventDefault();
    addFiles(files);
  }
});

ui.fpr.addEventListener("input", fprChanged);
ui.fprReset.addEventListener("click", () => {
  state.fpr = null;
  ui.fpr.value = String(positionOf(state.model.target_fpr));
  showFpr();
  rescoreAll();
});
ui.sort.addEventListener("change", () => {
  state.sort = ui.sort.value;
  sortEntries(state.entries, state.sort, ui.grid);
});
ui.opacity.addEventListener("input", () => {
  state.opacity = Number(ui.opacity.value) / 100;
  ui.opacity.setAttribute("aria-valuetext", `${ui.opacity.value} % opacity`);
  for (const entry of state.entries) {
    entry.opacity = state.opacity;
    drawOverlay(entry);
  }
});
ui.clear.addEventListener("click", clearAll);

loadModel();
