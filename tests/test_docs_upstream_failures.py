"""docs/upstream-failures.md says what the code does: its kinds, events and options."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from broker_proxy.audit.events import EVENTS
from broker_proxy.decision.upstream_failure import CONNECT_KINDS, KINDS
from broker_proxy.devtools import prefork

DOC = (Path(__file__).resolve().parent.parent / "docs" / "upstream-failures.md").read_text()


def test_the_kinds_table_is_the_code_s() -> None:
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| (.+?) \| (?:yes|no)", DOC, re.MULTILINE))
    assert rows == KINDS
    for kind in CONNECT_KINDS:
        assert re.search(rf"^\| `{kind}` \| .+ \| no \|$", DOC, re.MULTILINE)


def test_the_events_named_exist() -> None:
    for event in ("request_not_sent", "request_abandoned", "response", "request"):
        assert f"`{event}`" in DOC and event in EVENTS


def test_the_run_options_and_defaults_are_those_of_run_help() -> None:
    done = prefork.run([sys.executable, "-m", "broker_proxy.cli", "run", "--help"],
                          capture_output=True, text=True, timeout=60, check=True)
    help_text = " ".join(done.stdout.split())
    for option, default in re.findall(r"^\| `(--[a-z-]+)` \| (\w+) \|", DOC, re.MULTILINE):
        assert option in help_text
        assert re.search(rf"{option} DURATION .*?\(default {default}\b", help_text), option
