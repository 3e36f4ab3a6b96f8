"""MkDocs hooks: pages generated from the project itself, so they cannot drift from it.

- `<!-- cli-reference -->` becomes the `--help` of `vaekit` and of every subcommand, read from the
  CLI's own argparse parser.
- `<!-- include: PATH -->` becomes the text of PATH (relative to the repository root), e.g. the
  benchmark tables in benchmarks/README.md; `<!-- include: PATH as python -->` a code block. Links of
  the included file that point into docs/ are re-pointed from the including page; others become text.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
LINK = re.compile(r"(?P<bang>!?)\[(?P<text>[^\]]+)\]\((?!https?://|#)(?P<target>[^)]+)\)")
INCLUDE = re.compile(r"<!-- include: (?P<path>\S+?)(?: as (?P<language>\w+))? -->")


def cli_reference() -> str:
    from vaekit.cli import _parser

    parser = _parser()
    sections = ["```text", parser.format_help().rstrip(), "```"]
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in subparsers.choices.items():
        sections += [f"## vaekit {name}", "", "```text", command.format_help().rstrip(), "```", ""]
    return "\n".join(sections)


def _include(match: re.Match[str], page_dir: Path) -> str:
    included = ROOT / match["path"]
    text = included.read_text()
    if match["language"]:
        return f"```{match['language']}\n{text.rstrip()}\n```"

    def relink(link: re.Match[str]) -> str:
        """A relative link of the included file: re-pointed if it lands in docs/, else kept as text."""
        target = (included.parent / link["target"]).resolve()
        if DOCS in target.parents:
            return f"{link['bang']}[{link['text']}]({os.path.relpath(target, page_dir)})"
        return f"{link['text']} (`{link['target']}`)"

    return LINK.sub(relink, text)


def on_page_markdown(markdown: str, page: Any, **_: object) -> str:
    if "<!-- cli-reference -->" in markdown:
        markdown = markdown.replace("<!-- cli-reference -->", cli_reference())
    page_dir = (DOCS / page.file.src_path).parent
    return INCLUDE.sub(lambda match: _include(match, page_dir), markdown)
