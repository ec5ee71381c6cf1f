// Live updates: the /v1/events WebSocket when the server has one, polling otherwise.
//
// Events arrive one JSON object per message or a list of them per message; they are
// buffered and handed on in one batch per animation frame, so a burst of thousands of
// events costs one re-render. When the socket is closed or never opens, mode becomes
// "polling" and the socket is retried with a growing delay (2 s … 30 s).
//
// The API key travels as a subprotocol (["chronoq.bearer", key]), not in the URL, which
// proxies log; a socket the server closes with 4401 (refused or revoked key) is not
// retried but reported to onUnauthorized.

import { apiKey } from "./api.js";

export class Live {
  constructor({ onEvents, onMode, onUnauthorized }) {
    this.onEvents = onEvents;
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
    return `${scheme}//${location.host}/v1/events`;
  }

  setMode(mode, detail) {
    if (mode === this.mode) return;
    this.mode = mode;
    this.onMode(mode, detail);
  }

  start() {
    this.stop();
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
      const key = apiKey();
      socket = key ? new WebSocket(this.url, ["chronoq.bearer", key]) : new WebSocket(this.url);
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
