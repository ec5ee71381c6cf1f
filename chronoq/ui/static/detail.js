// The task detail panel: every field, payload, result, error and each attempt; the task
// view puts its progress and log lines (tasklog.js) in as ``extra``.

import { h } from "./dom.js";
import {
  duration, json, shortId, statusBadge, timeEl, toDate,
} from "./format.js";

export const RETRYABLE = new Set(["failed", "dead"]);
export const CANCELLABLE = new Set(["scheduled", "queued", "failed", "running"]);

function fact(label, ...value) {
  return [h("dt", null, label), h("dd", null, ...value)];
}

function block(title, value, cls = "") {
  return h("section", { class: "block" },
    h("h3", null, title),
    h("pre", { class: `code ${cls}`.trim() }, value));
}

function attemptsList(attempts) {
  if (!attempts || attempts.length === 0) {
    return h("p", { class: "muted" }, "No attempt yet.");
  }
  return h("ol", { class: "attempts" }, attempts.map((a) => {
    const start = toDate(a.started_at);
    const end = toDate(a.finished_at);
    const took = start ? ((end ? end.getTime() : Date.now()) - start.getTime()) / 1000 : null;
    const hasResult = a.result !== null && a.result !== undefined;
    return h("li", { class: "attempt", dataset: { attempt: a.attempt, outcome: a.outcome || "running" } },
      h("div", { class: "attempt-head" },
        h("strong", null, `#${a.attempt}`),
        statusBadge(a.outcome || "running"),
        h("span", { class: "muted" }, "on"),
        h("span", { class: "mono", title: "worker" }, a.worker_id)),
      h("div", { class: "attempt-times muted" },
        timeEl(a.started_at), " → ",
        a.finished_at ? timeEl(a.finished_at) : "still running",
        ` · ${duration(took)}`),
      a.error ? h("div", { class: "error-text attempt-error" }, a.error) : null,
      a.traceback ? h("details", null, h("summary", null, "Traceback"),
        h("pre", { class: "code error" }, a.traceback)) : null,
      hasResult ? h("details", null, h("summary", null, "Result"),
        h("pre", { class: "code" }, json(a.result))) : null);
  }));
}

/** The panel for ``task`` (a GET /v1/tasks/{id} answer). */
export function renderDetail(task, { onRetry, onCancel, onClose, busy = false, extra = null }) {
  const b = task.backoff || {};
  return h("div", { class: "detail-body", dataset: { id: task.id, status: task.status } },
    h("div", { class: "detail-head" },
      h("div", null,
        h("h2", null, task.name, " ", statusBadge(task.status)),
        h("div", { class: "mono muted selectable", title: "task id" }, task.id)),
      h("button", { type: "button", class: "btn btn-icon", title: "Close", "aria-label": "Close",
        onclick: onClose }, "×")),
    (task.warnings || []).map((w) => h("p", { class: "warning-text", role: "status" }, `⚠ ${w}`)),
    h("div", { class: "actions" },
      RETRYABLE.has(task.status) ? h("button", {
        type: "button", class: "btn btn-primary", disabled: busy,
        onclick: () => onRetry(task),
      }, "Retry now") : null,
      CANCELLABLE.has(task.status) ? h("button", {
        type: "button", class: "btn btn-danger", disabled: busy,
        onclick: () => onCancel(task),
      }, "Cancel") : null),
    h("dl", { class: "facts" },
      fact("Queue", task.queue),
      fact("Priority", String(task.priority)),
      fact("Attempts", `${task.attempts} of ${task.max_attempts}`),
      fact("Run at", timeEl(task.run_at), " ", h("span", { class: "muted" }, timeEl(task.run_at, { rel: true }))),
      fact("Created", timeEl(task.created_at)),
      fact("Updated", timeEl(task.updated_at)),
      task.worker_id ? fact("Worker", h("span", { class: "mono" }, task.worker_id)) : null,
      fact("Timeout", task.timeout_seconds ? duration(task.timeout_seconds) : "none"),
      fact("Backoff", `${b.base} s × ${b.factor}ⁿ, max ${b.max} s, jitter ${b.jitter}`),
      task.idempotency_key ? fact("Idempotency key", h("span", { class: "mono" }, task.idempotency_key)) : null,
      task.workflow_id ? fact("Workflow", h("a", { href: `#/workflows?id=${encodeURIComponent(task.workflow_id)}`,
        class: "mono", title: task.workflow_id }, task.workflow_node || shortId(task.workflow_id))) : null,
      task.schedule_id ? fact("Schedule", h("span", { class: "mono", title: task.schedule_id }, shortId(task.schedule_id)),
        task.slot ? [" slot ", timeEl(task.slot)] : null) : null),
    extra, // the progress bar and log lines (tasklog.js)
    block("Payload", json(task.payload)),
    task.result !== null && task.result !== undefined ? block("Result", json(task.result)) : null,
    task.error ? block("Error", task.error, "error") : null,
    h("section", { class: "block" },
      h("h3", null, `Attempts (${(task.attempt_history || []).length})`),
      attemptsList(task.attempt_history)));
}
