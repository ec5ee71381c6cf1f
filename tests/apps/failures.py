"""A test app: the recorder's handler, beside one whose error names a file whose name is
not valid UTF-8 (decoded with ``surrogateescape``, as ``os.listdir`` does)."""

from __future__ import annotations

import os

from tests.apps.recorder import app, record

__all__ = ["app", "record"]


@app.task("undecodable")
def undecodable() -> None:
    name = os.fsdecode(b"/data/caf\xe9.txt")  # '/data/caf\udce9.txt'
    raise OSError(f"cannot read {name}")
