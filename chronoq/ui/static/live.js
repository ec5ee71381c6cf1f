// Live updates: the /v1/events WebSocket when the server has one, polling otherwise.
//
// Events arrive one JSON object per message or a list of them per message; they are
// buffered and handed on in one batch per animation frame, so a burst of thousands of
// events costs one re-render. When the socket is closed or never opens, mode becomes
// "polling" and the socket is retried with a growing delay (2 s … 30 s).
//
// Resume: every event carries a cursor, and the socket opens with ?since=<the last one
// seen> (?since=latest the first time). The server replays what was missed while the
// socket was down, so a reconnect costs no reload; its first message says whether it
// could ("reset": false) or the page must re-read what it shows (onResync).
//
// The API key travels as a subprotocol (["chronoq.bearer", key]), not in the URL, which
// proxies log; a socket the server closes with 4401 (refused or revoked key) is not
// retried but reported to onUnauthorized.

import { eventSocket } from "./api.js";

export class Live {
  constructor({ onEvents, onMode, onUnauthorized, onResync }) {
    this.onEvents = onEvents;
    this.onResync = onResync;
    this.cursor = null; // the newest event's cursor: where a new socket resumes
    this.resumed = false; // a stream hello was seen since start()
    this.onMode = onMode;
    this.onUnauthorized = onUnauthorized;
    this.mode = "connecting";
    this.socket = null;
    this.buffer = [];
    this.flushing = false;
    this.retryDelay = 2000;
    this.retryTimer = null;
  }

  get url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const since = encodeURIComponent(this.cursor || "latest");
    return `${scheme}//${location.host}/v1/events?since=${since}`;
  }

  setMode(mode, detail) {
    if (mode === this.mode) return;
    this.mode = mode;
    this.onMode(mode, detail);
  }

  start() {
    this.stop();
    this.cursor = null; // another key may see other events: start afresh
    this.resumed = false;
    this.connect();
  }

  /** Close the socket and retry no more (until start). */
  stop() {
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const socket = this.socket;
    this.socket = null;
    if (socket) socket.close();
    this.setMode("connecting");
  }

  connect() {
    this.retryTimer = null;
    let socket;
    try {
      socket = eventSocket(this.url);
    } catch {
      this.fallBack();
      return;
    }
    this.socket = socket;
    socket.addEventListener("open", () => {
      this.retryDelay = 2000;
      this.setMode("live");
    });
    socket.addEventListener("message", (message) => this.receive(message.data));
    socket.addEventListener("close", (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (event.code === 4422) this.cursor = null; // a cursor the server does not know
      if (event.code === 4401 && this.onUnauthorized) this.onUnauthorized();
      else this.fallBack();
    });
    // "error" is always followed by "close"; nothing to do here.
  }

  fallBack() {
    this.setMode("polling");
    if (this.retryTimer === null) {
      this.retryTimer = setTimeout(() => this.connect(), this.retryDelay);
      this.retryDelay = Math.min(this.retryDelay * 2, 30000);
    }
  }

  receive(data) {
    if (typeof data !== "string") return;
    let parsed;
    try {
      parsed = JSON.parse(data);
    } catch {
      return;
    }
    const items = Array.isArray(parsed) ? parsed : [parsed];
    for (const item of items) {
      if (item && typeof item.cursor === "string") this.cursor = item.cursor;
      if (item && item.type === "stream") {
        // the first message: a reset (or a first connection, when events may have
        // happened since the view was read) means re-reading; else the replay follows
        if ((item.reset || !this.resumed) && this.onResync) this.onResync(item.reason || "");
        this.resumed = true;
        continue;
      }
      if (item && typeof item === "object" && typeof item.task_id === "string"
          && (item.type === undefined || item.type === "task")) {
        this.buffer.push(item);
      }
    }
    if (this.buffer.length && !this.flushing) {
      this.flushing = true;
      const flush = () => {
        this.flushing = false;
        const batch = this.buffer;
        this.buffer = [];
        if (batch.length) this.onEvents(batch);
      };
      // Hidden tabs get no animation frames; a timer still delivers.
      if (document.hidden) setTimeout(flush, 250);
      else requestAnimationFrame(flush);
    }
  }
}
