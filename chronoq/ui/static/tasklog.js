// A task's progress bar and captured log lines, in the task detail panel, pushed as they
// are written: the panel opens its own event socket for the task
// (/v1/events?types=log,progress&task_id=…) and appends each chunk of lines the worker
// stores (about twice a second while the handler logs) as its `log` event arrives.
// Nothing is asked again on a timer.
//
// GET /v1/tasks/{id}/logs fills in what the socket cannot have carried: once the socket
// is open (the lines written before it) and after every reconnect (those written while it
// was down), when a chunk's `seq` skips one (the server dropped events for a slow
// socket), and on the task view's refreshes while there is no socket at all. Chunks are
// numbered per attempt, so a chunk both read and pushed is shown once: the panel keeps the
// newest (attempt, seq) it shows, the endpoint's cursor. Nothing is asked when no task view
// is open. The panel outlives the detail's re-renders: the task view keeps one per open
// task and re-attaches its element.

import { eventSocket, get } from "./api.js";
import { h } from "./dom.js";
import { timeEl } from "./format.js";

export class TaskLog {
  constructor(taskId) {
    this.taskId = taskId;
    this.cursor = [0, 0]; // (attempt, seq) of the newest chunk shown
    this.status = null;
    this.loading = false;
    this.again = false; // asked to read while a read was on its way
    this.pending = []; // log events that arrived during a read
    this.stopped = false;
    this.lines = 0;
    this.progressAt = 0; // ms: the shown progress's time (an older one is not shown)
    this.socket = null;
    this.open = false;
    this.retryTimer = null;
    this.retryDelay = 1000;
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

  /** The task (a GET /v1/tasks/{id} answer) changed or was read again. */
  track(task) {
    this.status = task.status;
    if (this.stopped) return;
    if (this.socket !== null) return; // open, or opening (then it reads the lines)
    if (this.retryTimer === null) this.connect();
    else this.load(); // no socket now: the view's own refresh is the only way to hear more
  }

  /** The detail re-rendered around the panel (moving it resets its scroll): put it back. */
  restore() {
    this.list.scrollTop = this.stick ? this.list.scrollHeight : this.scroll;
  }

  stop() {
    this.stopped = true;
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const socket = this.socket;
    this.socket = null;
    this.open = false;
    if (socket) socket.close();
  }

  // -- the socket ----------------------------------------------------------------------------
  get url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const id = encodeURIComponent(this.taskId);
    return `${scheme}//${location.host}/v1/events?types=log,progress&task_id=${id}`;
  }

  connect() {
    this.retryTimer = null;
    if (this.stopped) return;
    let socket;
    try {
      socket = eventSocket(this.url);
    } catch {
      this.load();
      return;
    }
    this.socket = socket;
    socket.addEventListener("open", () => {
      if (this.socket !== socket) return;
      this.open = true;
      this.retryDelay = 1000;
      this.load(); // what was written before the socket (or while it was down)
    });
    socket.addEventListener("message", (message) => {
      if (this.socket === socket) this.receive(message.data);
    });
    socket.addEventListener("close", (event) => {
      if (this.socket !== socket) return;
      const wasOpen = this.open;
      this.socket = null;
      this.open = false;
      if (this.stopped || event.code === 4401) return;
      if (!wasOpen || event.code === 4400) this.load(); // show what there is now
      if (event.code === 4400) return; // a server without log events: reads only
      this.retryTimer = setTimeout(() => this.connect(), this.retryDelay);
      this.retryDelay = Math.min(this.retryDelay * 2, 30000);
    });
  }

  receive(data) {
    let items;
    try {
      items = JSON.parse(data);
    } catch {
      return;
    }
    for (const item of Array.isArray(items) ? items : [items]) {
      if (!item || item.task_id !== this.taskId) continue;
      if (item.type === "log") this.offer(item);
      else if (item.type === "progress") this.showProgress(item);
    }
  }

  /** A pushed chunk: shown if it is the next one, skipped if shown; a gap is read. */
  offer(event) {
    if (this.loading) {
      this.pending.push(event);
      return;
    }
    const [attempt, seq] = this.cursor;
    if (event.attempt < attempt || (event.attempt === attempt && event.seq <= seq)) return;
    const next = event.attempt === attempt ? event.seq === seq + 1 : event.seq === 1;
    if (!next) {
      this.load(); // some chunks never reached this socket: read them
      return;
    }
    this.cursor = [event.attempt, event.seq];
    this.append(event.attempt, event.lines);
    this.settle();
  }

  // -- reads ---------------------------------------------------------------------------------
  async load() {
    if (this.stopped) return;
    if (this.loading) {
      this.again = true;
      return;
    }
    this.loading = true;
    let answer = null;
    try {
      const [attempt, seq] = this.cursor;
      answer = await get(`/v1/tasks/${encodeURIComponent(this.taskId)}/logs`,
        attempt || seq ? { after: `${attempt}.${seq}` } : null);
      this.note.hidden = true;
    } catch (err) {
      this.note.hidden = false;
      this.note.textContent = `Logs: ${err.message}`;
    } finally {
      this.loading = false;
    }
    if (this.stopped) return;
    if (answer) this.show(answer);
    const pending = this.pending;
    this.pending = [];
    for (const event of pending) this.offer(event);
    if (this.again) {
      this.again = false;
      this.load();
    }
  }

  show(answer) {
    this.status = answer.status;
    if (answer.progress) this.showProgress(answer.progress);
    for (const attempt of answer.attempts) this.append(attempt.attempt, attempt.lines);
    const [attempt, seq] = String(answer.cursor).split(".").map(Number);
    if (attempt > this.cursor[0] || (attempt === this.cursor[0] && seq > this.cursor[1])) {
      this.cursor = [attempt, seq];
    }
    this.settle();
  }

  showProgress(p) {
    const at = Date.parse(p.at) || 0;
    if (at < this.progressAt) return; // a read that raced a newer event
    this.progressAt = at;
    const pct = Math.round(p.progress * 100);
    this.progress.hidden = false;
    this.progress.setAttribute("aria-valuenow", String(pct));
    this.progress.dataset.value = String(p.progress);
    this.bar.style.width = `${pct}%`;
    this.barLabel.textContent = `${pct}%${p.message ? ` · ${p.message}` : ""}` +
      (p.attempt ? ` (attempt ${p.attempt})` : "");
  }

  append(attemptNo, lines) {
    if (!lines.length) return;
    let group = this.list.querySelector(`li.log-attempt[data-attempt="${attemptNo}"]`);
    if (!group) {
      group = h("li", { class: "log-attempt", dataset: { attempt: attemptNo } },
        h("div", { class: "log-attempt-head muted" }, `Attempt #${attemptNo}`),
        h("ol", { class: "log-attempt-lines" }));
      this.list.appendChild(group);
    }
    const box = group.querySelector(".log-attempt-lines");
    for (const line of lines) {
      box.appendChild(h("li", { class: `log-line log-${line.stream}`, dataset: { stream: line.stream } },
        h("span", { class: "log-at muted" }, timeEl(line.at)),
        h("span", { class: "log-text" }, line.text)));
      this.lines += 1;
    }
  }

  settle() {
    this.empty.hidden = this.lines > 0;
    if (this.stick) this.list.scrollTop = this.list.scrollHeight;
  }
}
