"""The autoscaler: ``autoscale=(MIN, MAX)`` moves a worker's slots with its backlog.

Every period it doubles the slots while every slot is busy and the last fetch found
more work than there was room for; it halves them after 5 quiet periods with less than
half busy. The claim loop's prefetch, and a process pool's children, follow the slots.
"""

from __future__ import annotations

import asyncio
import logging

from chronoq.worker.claims import ClaimLoop

log = logging.getLogger("chronoq.worker")


class Autoscaler:
    """Resizes ``claims`` between ``low`` and ``high`` slots every ``period`` seconds."""

    def __init__(
        self, claims: ClaimLoop, low: int, high: int, period: float, worker_id: str
    ) -> None:
        self.claims = claims
        self.low, self.high = low, high
        self.period = period
        self.worker_id = worker_id
        self._idle_rounds = 0

    async def run(self) -> None:
        claims = self.claims
        while True:
            await asyncio.sleep(self.period)
            busy = len(claims.running)
            before = wanted = claims.concurrency
            if claims.saturated and busy >= before and before < self.high:
                wanted = min(self.high, before * 2)
                self._idle_rounds = 0
            elif busy < before / 2 and before > self.low:
                self._idle_rounds += 1
                if self._idle_rounds >= 5:
                    wanted = max(self.low, before // 2)
                    self._idle_rounds = 0
            else:
                self._idle_rounds = 0
            claims.saturated = False
            if wanted != before:
                claims.resize(wanted)
                log.info(
                    "worker %s concurrency %d -> %d (%d busy)", self.worker_id, before, wanted, busy
                )
