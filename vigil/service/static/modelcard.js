// The model card (from GET /model) and the training report's plots (from the bundle's
// report/, served read-only at /report/).

import { h, num, percent, plural } from "./dom.js";

const KINDS = { ae: "Autoencoder (AE)", vae: "Variational autoencoder (VAE)", "beta-vae": "β-VAE" };
const MODES = { L: "grayscale (L)", RGB: "colour (RGB)" };

function basename(path) {
  return String(path).split(/[\\/]/).filter(Boolean).pop() || String(path);
}

function facts(rows) {
  return h(
    "dl",
    { class: "facts" },
    rows.filter(Boolean).flatMap(([term, value, title]) => [
      h("dt", {}, term),
      h("dd", { title: title || null }, value),
    ]),
  );
}

function section(title, ...body) {
  return h("section", { class: "card-section" }, h("h3", {}, title), ...body);
}

export function describeKind(model) {
  const kind = KINDS[model.kind] || model.kind;
  return model.kind === "beta-vae" && model.beta !== null ? `${kind}, β = ${model.beta}` : kind;
}

export function renderModelCard(container, m) {
  const t = m.training;
  const c = m.calibration;
  const sizes = t.split_sizes || {};
  const split = ["train", "val", "calibration"]
    .filter((k) => k in sizes)
    .map((k) => `${sizes[k]} ${k === "val" ? "validation" : k}`)
    .join(" · ");
  container.replaceChildren(
    h("p", { class: "card-name" }, h("strong", { id: "model-name" }, m.name), ` version ${m.version}`,
      h("span", { class: "muted" }, ` · created ${String(m.created_at).slice(0, 10)}`)),
    section(
      "Model",
      facts([
        ["Kind", describeKind(m.model)],
        ["Latent", `${m.model.latent_dim} dimensions`],
        ["Loss", m.model.loss.toUpperCase() + (m.model.denoise ? `, denoising σ = ${m.model.denoise}` : "")],
        ["Parameters", Number(m.model.parameters).toLocaleString("en")],
        ["Input", `${m.input.width} × ${m.input.height} px, ${MODES[m.input.color_mode] || m.input.color_mode}`],
        ["Resize", `${m.input.resize}, aspect ratio ignored`],
      ]),
    ),
    section(
      "Training data",
      facts([
        ["Source", h("span", { class: "mono" }, basename(t.data_source)), t.data_source],
        ["Normal class", t.normal_class === null ? "all images (unlabelled)" : `class ${t.normal_class}`],
        ["Split", split || "–"],
        ["Epochs", `${t.epochs} (best: ${t.best_epoch})`],
        ["Trained", `${num(t.seconds, 3)} s on ${t.device}`],
      ]),
    ),
    section(
      "Calibration",
      facts([
        ["Method", `${c.method}, on ${plural(c.n, "held-out normal image")}`],
        ["Target FPR", percent(c.target_fpr)],
        ["In force", percent(m.target_fpr)],
        ["Verdict", c.verdict_scores.join(" or ")],
      ]),
    ),
    evaluation(m),
    section(
      "Runtime",
      facts([
        ["Provider", h("span", { class: "mono", id: "provider" }, m.provider)],
        ["Batching", m.batching.enabled ? `up to ${m.batching.max_batch} images per call` : "off"],
        ["Loaded", String(m.loaded_at).replace("T", " ").replace("+00:00", " UTC")],
      ]),
    ),
    scoreGlossary(m),
  );
}

function evaluation(m) {
  const e = m.evaluation || {};
  if (!e.scores || !Object.keys(e.scores).length) {
    return section("Evaluation", h("p", { class: "muted" }, "No evaluation stored in this bundle."));
  }
  const rows = m.scores
    .filter((name) => name in e.scores)
    .map((name) => {
      const s = e.scores[name];
      return h(
        "tr",
        { class: name === m.primary_score ? "primary-row" : null, title: m.score_descriptions[name] || null },
        h("th", { scope: "row" }, name),
        h("td", { class: "num" }, num(s.auroc, 3)),
        h("td", { class: "num" }, num(s.auprc, 3)),
        h("td", { class: "num" }, num(s.fpr_at_95_tpr, 2)),
      );
    });
  const verdict = e.verdict || {};
  return section(
    "Evaluation",
    h("p", { class: "eval-line" },
      `${plural(e.n_normal, "normal")} vs ${plural(e.n_anomalous, "anomaly", "anomalies")}; at the ${percent(e.target_fpr)} threshold: `,
      h("strong", {}, `FPR ${percent(verdict.fpr)}`), ", ",
      h("strong", {}, `TPR ${percent(verdict.tpr)}`), "."),
    h("table", { class: "eval" },
      h("thead", {}, h("tr", {},
        h("th", { scope: "col" }, "score"),
        h("th", { scope: "col", class: "num", title: "area under the ROC curve" }, "AUROC"),
        h("th", { scope: "col", class: "num", title: "area under the precision-recall curve" }, "AUPRC"),
        h("th", { scope: "col", class: "num", title: "false-positive rate at 95 % true-positive rate" }, "FPR@95"))),
      h("tbody", {}, rows)),
  );
}

function scoreGlossary(m) {
  const items = m.scores.map((name) => [name, m.score_descriptions[name] || ""]);
  return h("details", { class: "glossary" },
    h("summary", {}, "What the scores mean"),
    h("dl", {}, items.flatMap(([name, text]) => [h("dt", { class: "mono" }, name), h("dd", {}, text)])));
}

// The report's figures (<figure><img><figcaption>), grouped under their section headings.
export function renderReport(container, link, html) {
  if (html === null) {
    link.hidden = true;
    container.replaceChildren(
      h("p", { class: "muted", id: "no-report" },
        "This bundle has no training report (it was trained with --no-report). ",
        "Run vigil evaluate on it to write one."),
    );
    return;
  }
  // Only its figures are wanted: drop its stylesheet (the page's policy refuses inline styles).
  const doc = new DOMParser().parseFromString(html.replace(/<style[\s\S]*?<\/style>/gi, ""), "text/html");
  const base = new URL("/report/", window.location.origin);
  const figures = [];
  let heading = "";
  for (const el of doc.body.querySelectorAll("h2, figure")) {
    if (el.tagName === "H2") {
      heading = el.textContent.trim();
      continue;
    }
    const img = el.querySelector("img");
    const src = img && img.getAttribute("src");
    if (!src) continue;
    const url = new URL(src, base);
    if (url.origin !== base.origin || !url.pathname.startsWith(base.pathname)) continue;
    const caption = (el.querySelector("figcaption") || img).textContent.trim() || img.getAttribute("alt") || "";
    figures.push({ url: url.pathname, caption: caption || img.getAttribute("alt") || "", heading });
  }
  link.hidden = false;
  if (!figures.length) {
    container.replaceChildren(h("p", { class: "muted" }, "The report has no plots."));
    return;
  }
  container.replaceChildren(
    h("ul", { class: "gallery" },
      figures.map((f) =>
        h("li", {},
          h("figure", {},
            h("a", { href: f.url, target: "_blank", rel: "noopener", title: "open full size" },
              h("img", { src: f.url, alt: f.caption, loading: "lazy" })),
            h("figcaption", {}, f.heading ? h("strong", {}, `${f.heading}. `) : null, f.caption))))),
  );
}
