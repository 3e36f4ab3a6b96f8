"""MkDocs hooks: pages generated from the project itself, so they cannot drift from it.

- `<!-- cli-reference -->` becomes the `--help` of `vaekit` and of every subcommand, read from the
  CLI's own argparse parser.
- `<!-- include: PATH -->` becomes the text of PATH (relative to the repository root), e.g. the
  benchmark tables in benchmarks/README.md, or a tutorial script.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INCLUDE = re.compile(r"<!-- include: (?P<path>\S+?)(?: as (?P<language>\w+))? -->")


def cli_reference() -> str:
    from vaekit.cli import _parser

    parser = _parser()
    sections = ["```text", parser.format_help().rstrip(), "```"]
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in subparsers.choices.items():
        sections += [f"## vaekit {name}", "", "```text", command.format_help().rstrip(), "```", ""]
    return "\n".join(sections)


def _include(match: re.Match[str]) -> str:
    text = (ROOT / match["path"]).read_text()
    if match["language"]:
        return f"```{match['language']}\n{text.rstrip()}\n```"
    # relative links of an included file point into the repository, not into the site: keep their text and path
    return re.sub(r"\[([^\]]+)\]\((?!https?://|#)([^)]+)\)", r"\1 (`\2`)", text)


def on_page_markdown(markdown: str, **_: object) -> str:
    if "<!-- cli-reference -->" in markdown:
        markdown = markdown.replace("<!-- cli-reference -->", cli_reference())
    return INCLUDE.sub(_include, markdown)
