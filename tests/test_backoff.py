"""The retry-loop policy (chronoq.backoff.Outage): delays double to a cap; one traceback,
then one line per failure, then one line when it works again."""

from __future__ import annotations

import logging

import pytest

from chronoq.backoff import Outage

log = logging.getLogger("chronoq.test")


def test_delays_double_to_the_cap_and_start_afresh_after_a_success(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="chronoq.test")
    outage = Outage("reading the moon", log, first=1.0, cap=30.0)
    delays = [outage.failed(OSError("down")) for _ in range(7)]
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    assert outage.failing
    with_traceback = [r for r in caplog.records if r.exc_info]
    assert len(with_traceback) == 1 and with_traceback[0].levelno == logging.ERROR
    assert len(caplog.records) == 7  # one line per failure
    assert "failed again (7 in a row" in caplog.records[-1].getMessage()
    assert "OSError: down" in caplog.records[-1].getMessage()

    outage.over()
    outage.over()  # nothing to report twice
    assert [r.getMessage() for r in caplog.records[7:]] == [
        caplog.records[7].getMessage()
    ] and "works again after 7 failures" in caplog.text
    assert not outage.failing and outage.failed(OSError("again")) == 1.0
    assert caplog.records[-1].exc_info  # a new outage: a new traceback
