"""Small modules with one job, short functions: no module of the product over 600 lines, no
function over 60. A reader finds where a thing happens in one screen or two, and a module that
grows past the limit is a sign it took a second job: split it by job, not by line count."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCES = (REPO / "broker_proxy", REPO / "addons")
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60


def _modules() -> list[Path]:
    return sorted(path for root in SOURCES for path in root.rglob("*.py"))


def test_no_module_is_over_600_lines() -> None:
    long = [f"{path.relative_to(REPO)}: {lines}" for path in _modules()
            if (lines := path.read_text(encoding="utf-8").count("\n")) > MAX_MODULE_LINES]
    assert long == []


def test_no_function_is_over_60_lines() -> None:
    long = []
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {lines}")
    assert long == []
