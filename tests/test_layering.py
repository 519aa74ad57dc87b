"""The import contracts of the package, checked over the import graph of the source.

The core never imports mitmproxy, the addons or the CLI (so it can be tested and benchmarked
without a proxy); nothing that runs in the proxy imports the demo and test tools; and no two
modules import each other, also not through an import hidden inside a function.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.import_graph import ImportGraph, build_graph, cycles, forbidden_imports, under

REPO = Path(__file__).resolve().parent.parent
ROOTS = {"broker_proxy": REPO / "broker_proxy", "broker_proxy.addons": REPO / "addons"}

# The mitmproxy layer, the running process and the operator's entry points; everything else in
# broker_proxy is core.
OUTER = ("broker_proxy.addons", "broker_proxy.runtime", "broker_proxy.cli",
         "broker_proxy.admin_api")
ADDONS = ("broker_proxy.addons",)
# What the addons never import: imports go CLI -> runtime -> addons -> core (the mitmdump -s
# script finds the runtime through an entry point instead).
NEVER_IN_ADDONS = ("broker_proxy.runtime", "broker_proxy.cli")
# Being moved out of the runtime (the durability waiter belongs below the addons).
ADDONS_EXCEPTIONS = {"broker_proxy.addons.decide -> broker_proxy.runtime.durability_waiter"}
# What the core never imports (the admin API is outer but the core may name its errors).
NEVER_IN_CORE = ("mitmproxy", "broker_proxy.addons", "broker_proxy.cli")
DEVTOOLS = ("broker_proxy.devtools",)
# The one way into the demo tools from the product: the `broker-proxy demo` command.
DEVTOOLS_DOOR = ("broker_proxy.cli.demo_cmd",)


def check(graph: ImportGraph) -> list[str]:
    """Every broken contract, one line each; empty when the tree keeps them all."""
    core = [m for m in graph.modules if not under(m, *OUTER)]
    runtime = [m for m in graph.modules if not under(m, *DEVTOOLS, *DEVTOOLS_DOOR)]
    problems = [f"core imports the outer layer: {line}" for line in
                forbidden_imports(graph, core, NEVER_IN_CORE)]
    addons = [m for m in graph.modules if under(m, *ADDONS)]
    problems += [f"addons import the runtime or CLI: {line}" for line in
                 forbidden_imports(graph, addons, NEVER_IN_ADDONS)
                 if line not in ADDONS_EXCEPTIONS]
    problems += [f"runtime imports devtools: {line}" for line in
                 forbidden_imports(graph, runtime, DEVTOOLS)]
    problems += [f"import cycle: {' <-> '.join(group)}" for group in cycles(graph)]
    return problems


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return build_graph(ROOTS)


def test_the_package_keeps_its_import_contracts(graph: ImportGraph) -> None:
    assert check(graph) == []


def test_the_graph_sees_the_whole_package(graph: ImportGraph) -> None:
    assert {"broker_proxy.decision.broker", "broker_proxy.addons.broker",
            "broker_proxy.cli"} <= graph.modules
    assert "broker_proxy.decision.outbound" in graph.edges["broker_proxy.decision.broker"]


def _tree(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return {"pkg": root / "pkg"}


def test_checker_finds_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    graph = build_graph(_tree(tmp_path, {
        "__init__.py": "",
        "a.py": "from pkg.b import thing\n",
        "b.py": "def thing():\n    from pkg import a\n    return a\n",
        "c.py": "from . import a\n",
    }))
    assert cycles(graph) == [["pkg.a", "pkg.b"]]


def test_checker_finds_a_cycle_through_a_type_checking_import(tmp_path: Path) -> None:
    graph = build_graph(_tree(tmp_path, {
        "__init__.py": "",
        "a.py": "from pkg.b import thing\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import X\n"
                "thing = 1\n",
        "c.py": "from pkg import b\n",
    }))
    assert cycles(graph) == [["pkg.a", "pkg.b"]]
    assert "pkg.a" in graph.typing_edges["pkg.b"]
    assert "pkg.a" not in graph.edges.get("pkg.b", set())


def test_checker_names_each_broken_contract(tmp_path: Path) -> None:
    files = {
        "__init__.py": "",
        "addons/__init__.py": "",
        "addons/hooks.py": "import mitmproxy.http\n",
        "cli/__init__.py": "from broker_proxy import core\n",
        "core.py": "from mitmproxy import http\nfrom broker_proxy.addons.hooks import x\n",
        "runtime/__init__.py": "",
        "runtime/run.py": "def go():\n    from broker_proxy.devtools import echo\n",
        "devtools/__init__.py": "",
        "devtools/echo.py": "from broker_proxy.runtime import run\n",
    }
    for name, text in files.items():
        path = tmp_path / "broker_proxy" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    problems = check(build_graph({"broker_proxy": tmp_path / "broker_proxy"}))
    assert problems == [
        "core imports the outer layer: broker_proxy.core -> broker_proxy.addons.hooks",
        "core imports the outer layer: broker_proxy.core -> mitmproxy",
        "runtime imports devtools: broker_proxy.runtime.run -> broker_proxy.devtools.echo",
        "import cycle: broker_proxy.devtools.echo <-> broker_proxy.runtime.run",
    ]
