"""The worker: claims due tasks, runs them with their executor, reports each attempt's end.

Hot path, per batch of tasks: one claim statement, the handlers, one batched completion
transaction. It sleeps only when the queues are empty, until the hub wakes it (a task
was submitted or promoted) or ``poll_seconds`` pass. Its pieces:

* ``worker.py``: :class:`Worker`, which wires the others to one broker and store, and
  starts, drains and stops them;
* ``claims.py``: the claim loop, which fills the slots (and the prefetch) from the broker;
* ``attempts.py``: one attempt, from the executor to the completion saying how it ended;
* ``completions.py``: the completion buffer, written in batches;
* ``heartbeats.py``: lease renewal, the registry row, lost tasks and lost hand-offs;
* ``autoscale.py``: the autoscaler, which moves the slots with the backlog.
"""

from chronoq.worker.worker import Worker, builtin_executors, default_worker_id

__all__ = ["Worker", "builtin_executors", "default_worker_id"]
