// The error heatmap over the input, composited on a canvas at the model's input size.
//
// The input is drawn as the model sees it: on white (transparency is composited on white,
// as the service does), resized to the model's input size, in grayscale for an "L" model.
// The API's heatmap is an 8-bit PNG scaled so that 255 = heatmap_max; each value v in
// [0, 1] is coloured with an inferno-like colour map and blended over the input with an
// opacity growing with v, so low-error areas stay readable and high-error areas glow.

// Inferno, sampled at 9 points (matplotlib's, 0 -> 1).
const STOPS = [
  [0, 0, 4], [31, 12, 72], [85, 15, 109], [136, 34, 106], [186, 54, 85],
  [227, 89, 51], [249, 140, 10], [249, 201, 50], [252, 255, 164],
];

function colour(v) {
  const x = Math.min(Math.max(v, 0), 1) * (STOPS.length - 1);
  const i = Math.min(Math.floor(x), STOPS.length - 2);
  const t = x - i;
  const [a, b] = [STOPS[i], STOPS[i + 1]];
  return [0, 1, 2].map((k) => a[k] + (b[k] - a[k]) * t);
}

const LUT = Array.from({ length: 256 }, (_, i) => colour(i / 255));

// The same colour map as a CSS gradient, for the scale beside each heatmap.
export function gradient() {
  const parts = STOPS.map((c, i) => `rgb(${c.join(" ")}) ${((i / (STOPS.length - 1)) * 100).toFixed(1)}%`);
  return `linear-gradient(to right, ${parts.join(", ")})`;
}

export function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot display this image"));
    img.src = src;
  });
}

function canvas(width, height) {
  const el = document.createElement("canvas");
  el.width = width;
  el.height = height;
  return el;
}

// The input's pixels at the model's size ([r, g, b, a] per pixel), or null when the browser
// cannot decode the file (e.g. a TIFF): the heatmap is then shown on black.
export async function modelView(inputUrl, width, height, colorMode) {
  let img;
  try {
    img = await loadImage(inputUrl);
  } catch {
    return null;
  }
  const ctx = canvas(width, height).getContext("2d", { willReadFrequently: true });
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, width, height);
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "medium";
  ctx.drawImage(img, 0, 0, width, height);
  const data = ctx.getImageData(0, 0, width, height);
  if (colorMode === "L") {
    const px = data.data;
    for (let i = 0; i < px.length; i += 4) {
      const l = (px[i] * 299 + px[i + 1] * 587 + px[i + 2] * 114) / 1000; // ITU-R 601-2, as Pillow
      px[i] = px[i + 1] = px[i + 2] = l;
    }
  }
  return data;
}

// The heatmap's values in [0, 1] at its own size.
export async function heatValues(heatmapBase64) {
  const img = await loadImage(`data:image/png;base64,${heatmapBase64}`);
  const ctx = canvas(img.naturalWidth, img.naturalHeight).getContext("2d", { willReadFrequently: true });
  ctx.drawImage(img, 0, 0);
  const px = ctx.getImageData(0, 0, img.naturalWidth, img.naturalHeight).data;
  const values = new Float32Array(px.length / 4);
  for (let i = 0; i < values.length; i += 1) values[i] = px[i * 4] / 255;
  return { values, width: img.naturalWidth, height: img.naturalHeight };
}

// A PNG data URL of the heat values over the input (view may be null), at the heat map's size.
export function overlay(view, heat, opacity) {
  const { width, height, values } = heat;
  const out = canvas(width, height);
  const ctx = out.getContext("2d");
  const image = ctx.createImageData(width, height);
  const px = image.data;
  const base = view && view.width === width && view.height === height ? view.data : null;
  for (let i = 0; i < values.length; i += 1) {
    const v = values[i];
    const c = LUT[Math.round(v * 255)];
    const a = base ? opacity * (0.15 + 0.85 * v) : 1;
    for (let k = 0; k < 3; k += 1) {
      const under = base ? base[i * 4 + k] : 0;
      px[i * 4 + k] = under * (1 - a) + c[k] * a;
    }
    px[i * 4 + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
  return out.toDataURL("image/png");
}
