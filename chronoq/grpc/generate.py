"""Regenerate the Python modules of ``v1/chronoq.proto``: ``python -m chronoq.grpc.generate``.

Needs grpcio-tools and mypy-protobuf (both in the ``dev`` extra). The generated
``*_pb2.py``/``*_pb2_grpc.py`` are committed, with ``.pyi`` stubs from mypy-protobuf so
mypy checks callers against the messages; ``tests/test_grpc.py`` fails when they are stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: the directory ``chronoq/`` is in: the proto's import path is ``chronoq/grpc/v1/...``,
#: so the generated modules import each other as ``chronoq.grpc.v1``
ROOT = Path(__file__).resolve().parents[2]
PROTO = "chronoq/grpc/v1/chronoq.proto"


def generate(out: Path = ROOT) -> None:
    """Write the modules under ``out`` (the source tree by default)."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        str(ROOT / PROTO),
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {PROTO}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
