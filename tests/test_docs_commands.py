"""Doc examples do not rot: every `broker-proxy` command in a fenced `sh` block of README.md and
docs/*.md is accepted by the real command line (command, subcommand and every option), and the
few that need nothing but the package run here as written."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from broker_proxy.cli import build_parser
from tests.doc_blocks import DOC_FILES, REPO, broker_proxy_argv, sh_blocks

ALL = [(block, command) for path in DOC_FILES for block in sh_blocks(path)
       for command in block.commands]


def _ids() -> list[str]:
    return [f"{b.file.name}:{b.line}:{c[:50]}" for b, c in ALL]


def test_the_docs_have_commands_and_every_page_is_linked_from_the_front_page() -> None:
    assert len(ALL) > 20
    front = (REPO / "README.md").read_text()
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"](docs/{page.name})" in front, f"docs/{page.name} is not linked"


@pytest.mark.parametrize(("block", "command"), ALL, ids=_ids())
def test_each_broker_proxy_command_parses(block, command: str) -> None:
    argv = broker_proxy_argv(command)
    if argv is None:
        return
    # Placeholders the reader fills in are valid values for the parser as they are.
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            build_parser().parse_args(argv)
        except SystemExit as exit_:
            pytest.fail(f"{block.file.name}:{block.line}: `{command}` is refused by the command "
                        f"line ({exit_.code}): {stderr.getvalue().strip()}")


def test_the_commands_that_need_only_the_package_run_as_written(tmp_path: Path) -> None:
    # Everything a doc block says with `broker-proxy policy ...` that touches no home state:
    # init --list, init into a scratch path, check and schema.
    # `run --print-config` prints the settings and starts nothing.
    starts = ("broker-proxy policy init", "broker-proxy policy check policies/",
              "broker-proxy policy check /tmp/broker-proxy-docs", "broker-proxy run --print-config")
    runnable = [c for _, c in ALL if c.startswith(starts)]
    assert runnable
    env_bin = str(Path(sys.executable).parent)
    for command in runnable:
        done = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True,
                              timeout=120, check=False,
                              env={"PATH": env_bin + ":/usr/bin:/bin", "HOME": str(tmp_path)})
        assert done.returncode == 0, f"`{command}`: {done.stderr}"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


INLINE = sorted({(path.name, span) for path in DOC_FILES
                 for span in re.findall(r"`(broker-proxy [^`]+)`", path.read_text())})


@pytest.mark.parametrize(("page", "span"), INLINE, ids=[f"{p}:{s[:50]}" for p, s in INLINE])
def test_each_command_named_in_the_text_exists_with_its_options(page: str, span: str) -> None:
    # Synopses ("grant issue|list|approve", "[--json]", "FILE...") name commands and options;
    # each alternative must exist, with every option it names.
    words = span.replace("[", " ").replace("]", " ").split()[1:]
    heads = [[]]
    for word in words:
        if word.startswith("-") or word.isupper() or (not word[0].isalpha() and "|" not in word):
            break
        heads = [[*head, choice] for head in heads for choice in word.split("|")]
    words = words[:words.index("--")] if "--" in words else words  # then the agent's CMD
    options = [w.split("=")[0] for w in words if w.startswith("--")]
    for head in heads:
        parser = build_parser()
        for name in head:
            children = _subparsers(parser)
            if name not in children:
                if children:
                    pytest.fail(f"{page}: `{span}`: no command {' '.join(head)}")
                break
            parser = children[name]
        for option in options:
            assert option in parser._option_string_actions, (
                f"{page}: `{span}`: {' '.join(head)} has no option {option}")
