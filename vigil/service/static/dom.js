// Small helpers: build elements without innerHTML (no markup injection from file names or
// bundle contents), and format numbers the same way everywhere on the page.

export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("data-") || key.startsWith("aria-") || key === "role") el.setAttribute(key, value);
    else el[key] = value;
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function byId(id) {
  return document.getElementById(id);
}

// A score or threshold: 4 significant digits, no exponent for everyday magnitudes.
export function num(value, digits = 4) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e5)) return value.toExponential(digits - 1);
  return Number(value.toPrecision(digits)).toString();
}

// A rate as a percentage: "1 %", "0.83 %", "12.5 %".
export function percent(rate) {
  if (rate === null || rate === undefined) return "–";
  const value = rate * 100;
  const digits = value >= 10 ? 3 : 2;
  return `${Number(value.toPrecision(digits))} %`;
}

export function plural(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}
