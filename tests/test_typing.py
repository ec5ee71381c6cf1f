"""The package, its tests and the docs hooks type-check under mypy's strict mode (the
``[tool.mypy]`` settings of pyproject.toml), so a test that calls an API the wrong way
fails here rather than only at run time."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.processes import ROOT


@pytest.mark.slow  # about 12 s without mypy's cache
def test_package_tests_and_docs_hooks_type_check() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "chronoq", "tests", "docs/hooks.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Success: no issues found")
