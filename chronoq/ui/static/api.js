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

export async function request(method, path, { query, body, signal } = {}) {
  let response;
  try {
    response = await fetch(url(path, query), {
      method,
      signal,
      headers: body === undefined ? { accept: "application/json" }
        : { accept: "application/json", "content-type": "application/json" },
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
    throw new ApiError(response.status, error.code || "http_error",
      error.message || `${method} ${path} answered ${response.status}`);
  }
  return data;
}

export const get = (path, query, options) => request("GET", path, { ...options, query });
export const post = (path, body) => request("POST", path, { body });

export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
export const STATUSES = ["scheduled", "queued", "running", "succeeded", "failed", "dead",
  "cancelled"];
