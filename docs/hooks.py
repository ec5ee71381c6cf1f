"""MkDocs hooks (see mkdocs.yml): the site is built from the repository's Markdown as it is.

The manual (docs/) links to README.md, SECURITY.md, deploy/ and benchmarks/, and they link
back, with relative paths that work on GitHub. So the site mirrors the repository: the
README is the front page, docs/ pages keep their ``docs/`` prefix, and each other file a
page links to is copied at its repository path. ``mkdocs build --strict`` then checks every
link and anchor exactly as written, and headings get GitHub's anchors (:func:`slug`), so a
``#section`` means the same on GitHub and on the site.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files, InclusionLevel

ROOT = Path(__file__).resolve().parent.parent
#: the Markdown outside docs/ that is part of the site (each is in mkdocs.yml's nav)
PAGES = ("README.md", "SECURITY.md", "CHANGELOG.md", "deploy/README.md", "benchmarks/README.md")
#: ``[text](target)``: the target up to the closing parenthesis, no spaces
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str, separator: str = "-") -> str:
    """GitHub's anchor for a heading: lower case, punctuation but ``-`` and ``_`` dropped,
    spaces to ``-`` (MkDocs' own drops repeated hyphens, so ``--pool`` links would break)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", separator)


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    config.mdx_configs.setdefault("toc", {})["slugify"] = slug
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    site = Files([])

    def add(path: Path) -> None:
        uri = path.relative_to(ROOT).as_posix()
        if site.get_file_from_path(uri) is None:
            site.append(
                File.generated(
                    config, uri, abs_src_path=str(path), inclusion=InclusionLevel.INCLUDED
                )
            )

    for file in files:
        if file.abs_src_path is None or not Path(file.abs_src_path).is_relative_to(ROOT):
            site.append(file)  # the theme's CSS and JavaScript
        elif file.src_uri != "hooks.py":
            add(Path(file.abs_src_path))
    for page in PAGES:
        add(ROOT / page)
    for file in list(site.documentation_pages()):
        source = Path(str(file.abs_src_path))
        for target in linked(source.read_text(encoding="utf-8")):
            path = (source.parent / target).resolve()
            if path.is_file() and path.is_relative_to(ROOT):
                add(path)
    return site


def linked(markdown: str) -> list[str]:
    """The relative file targets of ``markdown``'s links (outside code), anchors cut off."""
    targets, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
            path = target.partition("#")[0]
            if path and not re.match(r"[a-z]+:", path):
                targets.append(path)
    return targets
