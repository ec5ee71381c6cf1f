"""Checked by mypy in tests/test_handles.py: submissions are typed like calls."""

from __future__ import annotations

from typing import assert_type

import chronoq

app = chronoq.App("sqlite:///unused.db")


@app.task("add")
def add(a: int, b: int = 0) -> int:
    return a + b


@app.task("fetch")
async def fetch(url: str) -> dict[str, str]:
    return {"url": url}


def check() -> None:
    assert_type(add.delay(a=1, b=2), chronoq.TaskHandle[int])
    assert_type(add.delay(a=1).result(timeout=1), int)
    assert_type(fetch.delay(url="x"), chronoq.TaskHandle[dict[str, str]])
    assert_type(add.options(priority=3).schedule(5, a=1), chronoq.TaskHandle[int])


async def acheck() -> None:
    assert_type(await (await fetch.adelay(url="x")).aresult(), dict[str, str])
    assert_type(await (await add.aschedule(1.5, a=1)).aresult(), int)


def check_keyword_at() -> None:
    assert_type(add.schedule(at=60, a=1), chronoq.TaskHandle[int])
