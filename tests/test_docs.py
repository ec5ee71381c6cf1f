"""The documentation's relative links resolve: every ``[text](path#anchor)`` in the README,
the manual (docs/) and the other top-level guides names a file that exists and, where it
gives an anchor, a heading of that file. The manual is spread over many pages, so a
section that moves must not leave a dead link behind.
"""

from __future__ import annotations

import functools
import re
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


def prose(text: str) -> list[str]:
    """The lines of ``text`` outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but ``-`` and ``_`` dropped,
    spaces to ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


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
