// The page's calls to the Vigil API: GET /model, POST /score, GET /report/index.html.
// Every failure becomes an ApiError carrying what the API said ({"error": {code, message}}),
// so the page can show the API's own message.

export class ApiError extends Error {
  constructor(status, code, message, filename) {
    super(message);
    this.status = status;
    this.code = code;
    this.filename = filename;
  }
}

async function failure(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: a proxy's page, a cut connection
  }
  const error = body && body.error;
  if (error && typeof error.message === "string") {
    return new ApiError(response.status, error.code || "error", error.message, error.filename);
  }
  return new ApiError(response.status, "http_error", `HTTP ${response.status} ${response.statusText}`);
}

async function call(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (exc) {
    throw new ApiError(0, "network_error", `the service cannot be reached (${exc.message})`);
  }
  if (!response.ok) throw await failure(response);
  return response;
}

export async function getModel() {
  return (await call("/model", { cache: "no-store" })).json();
}

// One file, one request: a multi-file request fails whole on one bad file, so each file is
// sent alone and a bad one cannot hide the others' results. The service's dynamic batcher
// gathers concurrent requests into one model call anyway.
export async function scoreFile(file, { targetFpr = null, heatmap = false, signal } = {}) {
  const params = new URLSearchParams();
  if (targetFpr !== null) params.set("target_fpr", String(targetFpr));
  if (heatmap) params.set("heatmap", "true");
  const form = new FormData();
  form.append("files", file, file.name);
  const query = params.toString();
  const response = await call(`/score${query ? `?${query}` : ""}`, {
    method: "POST",
    body: form,
    signal,
  });
  const body = await response.json();
  return { targetFpr: body.target_fpr, model: body.model, result: body.results[0] };
}

// The training report's index page, or null when the bundle has none (404).
export async function getReport() {
  try {
    return await (await call("/report/index.html", { cache: "no-store" })).text();
  } catch (exc) {
    if (exc instanceof ApiError && exc.status === 404) return null;
    throw exc;
  }
}

// Run `task` over `items` with at most `limit` in flight.
export async function eachLimited(items, limit, task) {
  const queue = [...items];
  const workers = Array.from({ length: Math.min(limit, queue.length) }, async () => {
    while (queue.length) await task(queue.shift());
  });
  await Promise.all(workers);
}
