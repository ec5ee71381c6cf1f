// The REST API of the same server. Errors carry the API's {"error": {code, message}}.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function url(path, query) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== null && value !== undefined && value !== "") params.set(key, String(value));
  }
  const qs = params.toString();
  return qs ? `${path}?${qs}` : path;
}

// API keys: when the server requires one (401), ask once and keep it in this browser.
const KEY = "chronoq.apiKey";

export function apiKey() {
  try {
    return window.localStorage.getItem(KEY) || "";
  } catch {
    return "";
  }
}

function askForKey(message) {
  const key = window.prompt(`${message}\nPaste a chronoq API key (chronoq keys create):`, "");
  if (key) window.localStorage.setItem(KEY, key.trim());
  return Boolean(key);
}

export async function request(method, path, { query, body, signal } = {}, retried = false) {
  let response;
  try {
    const headers = body === undefined ? { accept: "application/json" }
      : { accept: "application/json", "content-type": "application/json" };
    if (apiKey()) headers.authorization = `Bearer ${apiKey()}`;
    response = await fetch(url(path, query), {
      method,
      signal,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "unreachable", "the chronoq API does not answer");
  }
  let data = null;
  const text = await response.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (response.status === 401 && !retried) {
    const error = data && data.error ? data.error : {};
    if (askForKey(error.message || "This chronoq API requires an API key.")) {
      return request(method, path, { query, body, signal }, true);
    }
  }
  if (!response.ok) {
    const error = data && data.error ? data.error : {};
    throw new ApiError(response.status, error.code || "http_error",
      error.message || `${method} ${path} answered ${response.status}`);
  }
  return data;
}

export const get = (path, query, options) => request("GET", path, { ...options, query });
export const post = (path, body) => request("POST", path, { body });
export const del = (path) => request("DELETE", path);

export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
export const STATUSES = ["scheduled", "queued", "running", "succeeded", "failed", "dead",
  "cancelled"];
