"""Wait for a condition instead of sleeping a guessed time and then counting.

A test that sleeps 0.5 s and then asserts is slow on a quiet machine and flaky on a busy
one; these return as soon as the condition holds and fail with ``what`` (say what did not
happen: "the worker never registered") when it does not within ``timeout``. Use them only
where no event says the thing happened.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10) -> float:
    """Wait for ``await check()``; returns the seconds it took."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} after {timeout} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def until_sync(check: Callable[[], bool], what: str, timeout: float = 20) -> float:
    """:func:`until` for tests that drive processes from synchronous code."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} after {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - start
