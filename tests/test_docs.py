"""The documentation's relative links resolve: every ``[text](path#anchor)`` in the README,
the manual (docs/) and the other top-level guides names a file that exists and, where it
gives an anchor, a heading of that file. The manual is spread over many pages, so a
section that moves must not leave a dead link behind. And the manual builds as a site:
``mkdocs build --strict`` (mkdocs.yml, docs/hooks.py) fails on any warning.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted(
    [
        ROOT / "README.md",
        ROOT / "SECURITY.md",
        ROOT / "CHANGELOG.md",
        ROOT / "deploy" / "README.md",
        ROOT / "benchmarks" / "README.md",
        *(ROOT / "docs").glob("*.md"),
    ]
)
#: ``[text](target)``: the target up to the closing parenthesis, no spaces
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6}) +(.+?) *#* *$")


def _hooks() -> object:
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: GitHub's anchor for a heading; the site's headings get the same (docs/hooks.py)
slug = _hooks().slug  # type: ignore[attr-defined]


def prose(text: str) -> list[str]:
    """The lines of ``text`` outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


@functools.cache
def anchors(path: Path) -> frozenset[str]:
    """Every anchor of ``path``'s headings, with GitHub's ``-1``, ``-2`` for repeats."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return frozenset(found)


def links(path: Path) -> list[str]:
    """The relative link targets in ``path``'s prose (inline code spans left out)."""
    targets = []
    for line in prose(path.read_text(encoding="utf-8")):
        line = re.sub(r"`[^`]*`", "", line)
        targets += [t for t in LINK.findall(line) if not re.match(r"[a-z]+:", t)]
    return targets


def broken(path: Path) -> list[str]:
    problems = []
    for target in links(path):
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            problems.append(f"{target}: no file {dest.relative_to(ROOT)}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    return problems


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    assert broken(path) == []


def test_every_manual_page_is_in_the_index() -> None:
    index = set(links(ROOT / "docs" / "index.md"))
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"index.md"}
    assert pages - {t.partition("#")[0] for t in index} == set()


def test_slug_follows_github() -> None:
    assert slug("Live events: WebSocket `/v1/events`") == "live-events-websocket-v1events"
    assert (
        slug("Redis Streams broker: `CHRONOQ_BROKER_URL`")
        == "redis-streams-broker-chronoq_broker_url"
    )
    assert (
        slug("`chronoq.http` and server-side request forgery")
        == "chronoqhttp-and-server-side-request-forgery"
    )
    assert slug("6. Heartbeats and leases") == "6-heartbeats-and-leases"


def test_site_builds_in_strict_mode(tmp_path: Path) -> None:
    """Every page is in the nav, and every link and anchor resolves as MkDocs sees it."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert result.returncode == 0 and warnings == [], result.stderr
    front = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "chronoq" in front and 'href="docs/tour/"' in front  # the README, its links kept
    assert (tmp_path / "docs" / "tasks" / "index.html").exists()
