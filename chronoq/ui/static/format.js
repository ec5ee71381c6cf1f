// Times, durations and JSON for display. The API speaks ISO 8601 in UTC; events may carry
// either ISO strings or epoch seconds.

import { h } from "./dom.js";

export function toDate(value) {
  if (value === null || value === undefined || value === "") return null;
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return Number.isNaN(date.getTime()) ? null : date;
}

const pad = (n, width = 2) => String(n).padStart(width, "0");

/** Local time: "14:03:07" today, "2026-11-24 14:03:07" on another day. */
export function clock(value) {
  const d = toDate(value);
  if (!d) return "–";
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  const now = new Date();
  if (d.toDateString() === now.toDateString()) return time;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
}

/** Seconds as "850 ms", "12.3 s", "4m 05s", "2h 10m", "3d 4h". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "–";
  const s = Math.abs(seconds);
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${pad(Math.floor(s % 60))}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${pad(Math.floor((s % 3600) / 60))}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

/** "in 12 s" / "3m 05s ago" relative to now. */
export function relative(value) {
  const d = toDate(value);
  if (!d) return "–";
  const delta = (d.getTime() - Date.now()) / 1000;
  if (Math.abs(delta) < 1) return "now";
  return delta > 0 ? `in ${duration(delta)}` : `${duration(-delta)} ago`;
}

/** A <time> element showing the local clock, with the full ISO value on hover. Elements
 * with data-relative are refreshed every second by main.js. */
export function timeEl(value, { rel = false } = {}) {
  const d = toDate(value);
  if (!d) return h("span", { class: "muted" }, "–");
  return h("time", {
    datetime: d.toISOString(),
    title: `${d.toISOString()} (${rel ? clock(value) : relative(value)})`,
    dataset: rel ? { relative: d.toISOString() } : undefined,
  }, rel ? relative(d.toISOString()) : clock(value));
}

export function shortId(id) {
  return typeof id === "string" && id.length > 13 ? `${id.slice(0, 8)}…${id.slice(-4)}` : id;
}

export function json(value) {
  if (value === undefined) return "";
  try {
    return JSON.stringify(value, null, 2);
  } catch {
    return String(value);
  }
}

export function number(n) {
  return typeof n === "number" ? n.toLocaleString("en-US") : "–";
}

export function truncate(text, max = 120) {
  if (typeof text !== "string") return "";
  const line = text.split("\n")[0];
  return line.length > max ? `${line.slice(0, max - 1)}…` : line;
}

export function statusBadge(status) {
  return h("span", { class: `badge badge-${status}`, dataset: { status } }, status);
}
