// A task's progress bar and captured log lines (GET /v1/tasks/{id}/logs), in the task
// detail panel. While the task runs the panel asks for the lines written since its cursor
// once a second (the worker writes them about twice a second), so they appear as the
// handler logs them; a finished task is read once more, then no more. Nothing is asked
// when no task view is open. The panel outlives the detail's re-renders: the task view
// keeps one per open task and re-attaches its element.

import { get } from "./api.js";
import { h } from "./dom.js";
import { timeEl } from "./format.js";

const FOLLOW_MS = 1000;
// followed every second only while running; in other states the task view's own refresh
// (on the task's events) asks again
const RUNNING = "running";

export class TaskLog {
  constructor(taskId) {
    this.taskId = taskId;
    this.cursor = null;
    this.status = null;
    this.timer = null;
    this.loading = false;
    this.stopped = false;
    this.finalRead = false;
    this.lines = 0;
    this.bar = h("div", { class: "progress-fill" });
    this.barLabel = h("span", { class: "progress-label" }, "");
    this.progress = h("div", {
      class: "progress", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100",
      "aria-label": "Progress", hidden: true,
    }, this.bar, this.barLabel);
    this.list = h("ol", { class: "log-lines", "aria-label": "Log lines" });
    this.scroll = 0;
    this.stick = true; // at the bottom: new lines keep it there
    this.list.addEventListener("scroll", () => {
      this.scroll = this.list.scrollTop;
      this.stick = this.list.scrollTop + this.list.clientHeight >= this.list.scrollHeight - 4;
    });
    this.empty = h("p", { class: "muted log-empty" }, "No log lines yet.");
    this.note = h("p", { class: "muted log-note", hidden: true }, "");
    this.el = h("section", { class: "block task-log", dataset: { task: taskId } },
      h("h3", null, "Progress and logs"),
      this.progress,
      this.empty,
      this.list,
      this.note);
  }

  /** The task (a GET /v1/tasks/{id} answer) changed: follow it while it runs. */
  track(task) {
    this.status = task.status;
    if (this.stopped) return;
    if (this.timer === null && !this.loading) this.load();
  }

  /** The detail re-rendered around the panel (moving it resets its scroll): put it back. */
  restore() {
    this.list.scrollTop = this.stick ? this.list.scrollHeight : this.scroll;
  }

  stop() {
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  async load() {
    this.timer = null;
    if (this.stopped) return;
    this.loading = true;
    let answer = null;
    try {
      answer = await get(`/v1/tasks/${encodeURIComponent(this.taskId)}/logs`,
        this.cursor ? { after: this.cursor } : null);
    } catch (err) {
      this.note.hidden = false;
      this.note.textContent = `Logs: ${err.message}`;
    } finally {
      this.loading = false;
    }
    if (this.stopped) return;
    if (answer) this.show(answer);
    const status = answer ? answer.status : this.status;
    if (status === RUNNING) {
      this.finalRead = false;
      this.timer = setTimeout(() => this.load(), FOLLOW_MS);
    } else if (!this.finalRead) {
      // the worker writes the attempt's last lines up to half a second after it ended
      this.finalRead = true;
      this.timer = setTimeout(() => this.load(), FOLLOW_MS);
    }
  }

  show(answer) {
    this.cursor = answer.cursor;
    this.status = answer.status;
    const p = answer.progress;
    if (p) {
      const pct = Math.round(p.progress * 100);
      this.progress.hidden = false;
      this.progress.setAttribute("aria-valuenow", String(pct));
      this.progress.dataset.value = String(p.progress);
      this.bar.style.width = `${pct}%`;
      this.barLabel.textContent = `${pct}%${p.message ? ` · ${p.message}` : ""}` +
        (p.attempt ? ` (attempt ${p.attempt})` : "");
    }
    for (const attempt of answer.attempts) {
      let group = this.list.querySelector(`li.log-attempt[data-attempt="${attempt.attempt}"]`);
      if (!group) {
        group = h("li", { class: "log-attempt", dataset: { attempt: attempt.attempt } },
          h("div", { class: "log-attempt-head muted" }, `Attempt #${attempt.attempt}`),
          h("ol", { class: "log-attempt-lines" }));
        this.list.appendChild(group);
      }
      const box = group.querySelector(".log-attempt-lines");
      for (const line of attempt.lines) {
        box.appendChild(h("li", { class: `log-line log-${line.stream}`, dataset: { stream: line.stream } },
          h("span", { class: "log-at muted" }, timeEl(line.at)),
          h("span", { class: "log-text" }, line.text)));
        this.lines += 1;
      }
    }
    this.empty.hidden = this.lines > 0;
    if (this.stick) this.list.scrollTop = this.list.scrollHeight;
  }
}
