// The REST API of the same server. Errors carry the API's {"error": {code, message}}.

export class ApiError extends Error {
  constructor(status, code, message, details = []) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details; // [{field, message}] of a 4xx, as the API gives them
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

// API keys: when the server requires one (401), the page shows its sign-in form; the key
// is kept in sessionStorage (this tab, until it is closed), never in a URL.
const KEY = "chronoq.apiKey";

try {
  window.localStorage.removeItem(KEY); // older versions kept it for good
} catch {
  // storage disabled: nothing kept anywhere
}

export function apiKey() {
  try {
    return window.sessionStorage.getItem(KEY) || "";
  } catch {
    return "";
  }
}

/** A WebSocket to ``url`` that carries the API key, if one is set, as its sub-protocol
 * (browsers cannot set headers on a WebSocket); throws as the constructor does. */
export function eventSocket(url) {
  const key = apiKey();
  return key ? new WebSocket(url, ["chronoq.bearer", key]) : new WebSocket(url);
}

export function setApiKey(key) {
  try {
    if (key) window.sessionStorage.setItem(KEY, key);
    else window.sessionStorage.removeItem(KEY);
  } catch {
    // storage disabled: the key lasts as long as this page
  }
}

let unauthorized = () => {};

/** Call ``fn(message)`` whenever the API refuses the key (or its absence) with a 401. */
export function onUnauthorized(fn) {
  unauthorized = fn;
}

/** A request with ``key`` (default: the session's). A 401 is reported to the
 * ``onUnauthorized`` handler unless ``key`` was given (the sign-in form checks its own). */
export async function request(method, path, { query, body, signal, key } = {}) {
  let response;
  const secret = key === undefined ? apiKey() : key;
  try {
    const headers = body === undefined ? { accept: "application/json" }
      : { accept: "application/json", "content-type": "application/json" };
    if (secret) headers.authorization = `Bearer ${secret}`;
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
  if (!response.ok) {
    const error = data && data.error ? data.error : {};
    const failure = new ApiError(response.status, error.code || "http_error",
      error.message || `${method} ${path} answered ${response.status}`,
      Array.isArray(error.details) ? error.details : []);
    if (response.status === 401 && key === undefined) unauthorized(failure.message);
    throw failure;
  }
  return data;
}

export const get = (path, query, options) => request("GET", path, { ...options, query });
export const post = (path, body) => request("POST", path, { body });
export const patch = (path, body) => request("PATCH", path, { body });
export const del = (path) => request("DELETE", path);

export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
export const STATUSES = ["scheduled", "queued", "running", "succeeded", "failed", "dead",
  "cancelled"];
