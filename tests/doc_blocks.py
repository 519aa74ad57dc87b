"""The fenced `sh` blocks of README.md and docs/*.md, as the tests that run them read them.

A block is marked for running end to end by an HTML comment on the line before its fence:
`<!-- doc-test: NAME -->`. Commands span continuation lines (a trailing backslash); comments
(`# ...` outside quotes) are dropped.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC_FILES = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))
_MARK = re.compile(r"<!-- doc-test: ([a-z0-9-]+) -->")


@dataclass(frozen=True)
class Block:
    file: Path
    line: int  # of the opening fence, 1-based
    name: str | None  # the doc-test mark, if any
    commands: tuple[str, ...]


def sh_blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        if lines[index].strip() == "```sh":
            mark = _MARK.fullmatch(lines[index - 1].strip()) if index else None
            start = index
            body: list[str] = []
            index += 1
            while lines[index].strip() != "```":
                body.append(lines[index])
                index += 1
            blocks.append(Block(path, start + 1, mark.group(1) if mark else None,
                                tuple(_commands(body))))
        index += 1
    return blocks


def _commands(body: list[str]) -> list[str]:
    commands: list[str] = []
    pending = ""
    for raw in body:
        line = pending + _without_comment(raw).rstrip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if line.strip():
            commands.append(line.strip())
    return commands


def _without_comment(line: str) -> str:
    """The line up to a `#` that starts a shell comment (not inside quotes or a word)."""
    quote = ""
    for position, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (position == 0 or line[position - 1] in " \t"):
            return line[:position]
    return line


def broker_proxy_argv(command: str) -> list[str] | None:
    """The arguments of a `broker-proxy ...` command, also inside `eval "$(...)"`."""
    inner = re.search(r"\$\((broker-proxy [^)]*)\)", command)
    text = inner.group(1) if inner else command
    if not text.startswith("broker-proxy "):
        return None
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    argv: list[str] = []
    for token in list(lexer)[1:]:
        if token and set(token) <= set("|&;<>()"):
            break  # a pipe, redirection or the next command
        argv.append(token)
    return argv


def marked(name: str) -> Block:
    [block] = [b for path in DOC_FILES for b in sh_blocks(path) if b.name == name]
    return block
