// The result cards: one per file, built from the page's <template>, sorted on demand.

import { h, num } from "./dom.js";
import { gradient, overlay } from "./heatmap.js";

const template = document.getElementById("card-template");
const SCALE = gradient();

export function createCard(entry) {
  const li = template.content.firstElementChild.cloneNode(true);
  const q = (selector) => li.querySelector(selector);
  li.dataset.filename = entry.file.name;
  q(".filename").textContent = entry.file.name;
  q(".filename").title = entry.file.name;
  const input = q(".input img");
  input.src = entry.url;
  input.alt = `${entry.file.name} as uploaded`;
  input.addEventListener("load", () => {
    q(".input figcaption").textContent = `Input · ${input.naturalWidth}×${input.naturalHeight}`;
  });
  input.addEventListener("error", () => {
    input.hidden = true;
    q(".input .frame").append(h("span", { class: "no-preview", text: "no preview in this browser" }));
  });
  q(".scale-bar").style.backgroundImage = SCALE;
  entry.card = li;
  return li;
}

function verdictOf(entry) {
  if (entry.state === "error") return "error";
  if (entry.state !== "ok") return "pending";
  return entry.result.is_anomaly ? "anomaly" : "normal";
}

const BADGES = { anomaly: "Anomaly", normal: "Normal", error: "Error", pending: "Scoring…" };

export function renderEntry(entry, model) {
  const li = entry.card;
  const q = (selector) => li.querySelector(selector);
  const verdict = verdictOf(entry);
  li.dataset.verdict = verdict;
  q(".badge").textContent = entry.state === "ok" && entry.rescoring ? `${BADGES[verdict]} …` : BADGES[verdict];
  li.setAttribute("aria-busy", String(entry.state === "pending" || Boolean(entry.rescoring)));

  const failed = entry.state === "error";
  q(".card-error").hidden = !failed;
  q(".figures").hidden = failed && !entry.result;
  if (failed) {
    q(".error-code").textContent = entry.error.status ? `${entry.error.status} ${entry.error.code}` : entry.error.code;
    q(".error-message").textContent = entry.error.message;
  }
  if (!entry.result) {
    q(".primary").textContent = "";
    q(".all-scores").hidden = true;
    return;
  }
  renderScores(li, entry.result, model);
  renderMaps(li, entry, model);
}

// What /score's heatmap is: the bundle's anomaly map where its graph has one (schema 2: the
// local map, the defect head's logits and their sum, in standardised units), else the
// squared reconstruction error.
const MAPS = {
  anomaly: { scale: "anomaly map", caption: "Anomaly map over input", alt: "anomaly map" },
  error: { scale: "squared error", caption: "Error over input", alt: "per-pixel reconstruction error" },
};

function mapKind(model) {
  return model.onnx?.outputs?.includes("anomaly_map") ? MAPS.anomaly : MAPS.error;
}

function renderScores(li, result, model) {
  const q = (selector) => li.querySelector(selector);
  const primary = model.primary_score;
  const threshold = result.thresholds[primary];
  const over = result.score > threshold;
  li.dataset.score = String(result.score);
  const sub = [`p-value ${num(result.p_values[primary], 2)}`];
  if (result.flagged_by.length) sub.push(`flagged by ${result.flagged_by.join(", ")}`);
  else sub.push("not flagged");
  q(".primary").replaceChildren(
    h("div", { class: "primary-line" },
      h("span", { class: "mono" }, primary), " ",
      h("strong", { class: "mono primary-score" }, num(result.score)),
      h("span", { class: over ? "cmp over" : "cmp" }, over ? " > " : " ≤ "),
      h("span", { class: "mono primary-threshold" }, num(threshold)),
      h("span", { class: "muted" }, " threshold")),
    h("div", { class: "primary-sub" }, sub.join(" · ")),
  );

  const verdictScores = new Set(model.calibration.verdict_scores);
  const rows = model.scores.map((name) => {
    const value = result.scores[name];
    const limit = result.thresholds[name];
    const flagged = result.flagged_by.includes(name);
    const cls = [name === primary ? "primary-row" : "", flagged ? "over" : ""].join(" ").trim();
    return h(
      "tr",
      { class: cls || null, title: model.score_descriptions[name] || null },
      h("th", { scope: "row" }, name, verdictScores.has(name) ? h("span", { class: "tag", title: "a verdict score" }, "*") : null),
      h("td", { class: "num" }, num(value)),
      h("td", { class: "num" }, num(limit)),
      h("td", { class: "num" }, num(result.p_values[name], 2)),
    );
  });
  q(".all-scores tbody").replaceChildren(...rows);
  q(".all-scores .table-note").textContent = `* verdict: flagged when ${[...verdictScores].join(" or ")} is over its threshold`;
  q(".all-scores").hidden = false;
}

function renderMaps(li, entry, model) {
  const q = (selector) => li.querySelector(selector);
  entry.maps.kind = mapKind(model);
  if (entry.maps.reconstruction) {
    const recon = q(".reconstruction img");
    if (!recon.src) {
      recon.src = `data:image/png;base64,${entry.maps.reconstruction}`;
      recon.alt = `the model's reconstruction of ${entry.file.name}`;
    }
  }
  if (entry.maps.heat) {
    drawOverlay(entry);
    q(".scale").hidden = false;
    q(".scale-title").textContent = entry.maps.kind.scale;
    q(".scale-max").textContent = num(entry.maps.heatmapMax, 3);
  }
}

export function drawOverlay(entry) {
  if (!entry.maps.heat || !entry.card) return;
  const img = entry.card.querySelector(".heatmap img");
  img.src = overlay(entry.maps.view, entry.maps.heat, entry.opacity);
  const kind = entry.maps.kind || MAPS.error;
  img.alt = `${kind.alt} of ${entry.file.name} over the input; brighter is larger`;
  const caption = entry.card.querySelector(".heatmap figcaption");
  caption.textContent = entry.maps.view ? kind.caption : `${kind.caption.split(" over ")[0]} (input not viewable)`;
}

const ORDERS = {
  // Errors and unscored files last, then by the primary score.
  anomalous: (a, b) => rank(a) - rank(b) || byScore(b, a) || a.order - b.order,
  normal: (a, b) => rank(a) - rank(b) || byScore(a, b) || a.order - b.order,
  name: (a, b) => a.file.name.localeCompare(b.file.name, undefined, { numeric: true }) || a.order - b.order,
  order: (a, b) => a.order - b.order,
};

function byScore(a, b) {
  return a.result && b.result ? a.result.score - b.result.score : 0;
}

function rank(entry) {
  return entry.result ? 0 : entry.state === "error" ? 2 : 1;
}

export function sortEntries(entries, key, grid) {
  const sorted = [...entries].sort(ORDERS[key] || ORDERS.anomalous);
  const current = [...grid.children];
  if (sorted.every((entry, i) => current[i] === entry.card)) return;
  const focused = document.activeElement;
  grid.append(...sorted.map((entry) => entry.card));
  if (focused && grid.contains(focused)) focused.focus();
}
