// Queue statistics sampled over time: the source of the overview's counts and of the
// throughput (succeeded tasks per minute), computed from the growth of the succeeded count.

import { get } from "./api.js";

const KEEP_MS = 10 * 60 * 1000;

export class Stats {
  constructor({ onChange, onError }) {
    this.samples = []; // {t, succeeded, dead, queues}
    this.queues = [];
    this.onChange = onChange;
    this.onError = onError;
    this.inflight = null;
  }

  /** Fetch /v1/queues once (concurrent calls share one request). */
  sample() {
    if (this.inflight) return this.inflight;
    this.inflight = (async () => {
      try {
        const queues = await get("/v1/queues");
        const t = Date.now();
        let succeeded = 0;
        let dead = 0;
        for (const q of queues) {
          succeeded += q.counts.succeeded || 0;
          dead += q.counts.dead || 0;
        }
        this.queues = queues;
        this.samples.push({ t, succeeded, dead });
        while (this.samples.length > 2 && this.samples[0].t < t - KEEP_MS) this.samples.shift();
        this.onChange(this);
      } catch (err) {
        this.onError(err);
      } finally {
        this.inflight = null;
      }
    })();
    return this.inflight;
  }

  get latest() {
    return this.samples.length ? this.samples[this.samples.length - 1] : null;
  }

  queueNames() {
    return this.queues.map((q) => q.queue);
  }

  total(status) {
    return this.queues.reduce((n, q) => n + (q.counts[status] || 0), 0);
  }

  /** Succeeded tasks per minute over the last ``windowMs`` (or as much as was sampled);
   * null until two samples at least 1.5 s apart exist. */
  throughput(windowMs = 60000) {
    const last = this.latest;
    if (!last) return null;
    let first = null;
    for (const s of this.samples) {
      if (s.t >= last.t - windowMs) {
        first = s;
        break;
      }
    }
    if (!first || last.t - first.t < 1500) return null;
    const done = Math.max(0, last.succeeded - first.succeeded);
    return { perMinute: (done * 60000) / (last.t - first.t), seconds: (last.t - first.t) / 1000 };
  }

  /** Per-interval rates (tasks/min) for a sparkline, oldest first, over ``windowMs``. */
  series(windowMs = 5 * 60000) {
    const last = this.latest;
    if (!last) return [];
    const points = this.samples.filter((s) => s.t >= last.t - windowMs);
    const out = [];
    for (let i = 1; i < points.length; i++) {
      const dt = points[i].t - points[i - 1].t;
      if (dt <= 0) continue;
      out.push({
        t: points[i].t,
        rate: (Math.max(0, points[i].succeeded - points[i - 1].succeeded) * 60000) / dt,
      });
    }
    return out;
  }
}
