"""The import contracts of the package, checked over the import graph of the source.

The intended map (docs/ARCHITECTURE.md, "The parts and what each may import") is written below as
data, ``LAYERS``: each part of the package and the parts it may import. Every import edge of the
whole tree, also one inside a function or under ``if TYPE_CHECKING:``, must follow it; a new
package or top-level module must be placed on it before it can import anything. The named rules
(``RULES``) are checked twice: against the source, and against the map itself, so that the map
cannot be loosened into breaking one of them. Besides: nothing that runs in the proxy imports the
demo and test tools, and no two modules import each other.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.import_graph import ImportGraph, build_graph, cycles, forbidden_imports, under

REPO = Path(__file__).resolve().parent.parent
ROOTS = {"broker_proxy": REPO / "broker_proxy", "broker_proxy.addons": REPO / "addons"}
MITMPROXY = "mitmproxy"

# Each part (a package or top-level module of broker_proxy, by its name below broker_proxy;
# "broker_proxy" is the root package itself) and the parts it may import directly. What those
# may import, it may import too: the map is read transitively, and it must have no cycle.
# Small modules with one job each that the whole core may use: the root package (its
# version), errors, strict JSON, the clock, the home directory, durations.
FOUNDATIONS = ("broker_proxy", "errors", "strict_json", "time_source", "home", "durations")
LAYERS: dict[str, frozenset[str]] = {k: frozenset(v) for k, v in {
    **{part: () for part in FOUNDATIONS if part != "durations"},
    "durations": ("errors",),
    "identity": (),
    "metrics": (),
    # The core, bottom up. The request and its verdict first: everything else names them.
    "request": (),
    "policy": ("request", "identity", *FOUNDATIONS),
    "secrets": ("policy",),
    "audit": ("policy",),
    "grants": ("audit",),  # state: grants, secrets, audit
    "signing": ("secrets",),
    "scrubbing": ("grants", "secrets"),  # handed values: no decision code
    # The small HTTP layer every listener shares: its error type, route table and role check.
    "http_routes": ("identity", "errors"),
    # Held requests, decided in the console, the admin API or from chat (Slack, signed
    # webhooks: their vault-held keys, their failed signatures slowed like failed sign-ins).
    "approvals": ("grants", "identity", "http_routes", "secrets", "signin_guard"),
    "sign_in": ("policy", "identity"),
    "decision": ("approvals", "scrubbing", "signing", "metrics"),
    "error_text": ("policy",),
    "policy_tools": ("decision", "error_text"),
    "readiness": ("grants",),
    "signin_guard": ("audit",),
    "console": ("decision", "sign_in"),
    # The mitmproxy layer: the core and mitmproxy.
    "addons": ("decision", "error_text", MITMPROXY),
    # The operator's entry points and the running process.
    "admin_token": ("errors",),
    "admin_api": ("console", "signin_guard", "admin_token"),
    "runtime": ("addons", "admin_api", "readiness"),
    "devtools": ("runtime",),
    "cli": ("runtime", "policy_tools", "devtools"),
    MITMPROXY: (),
}.items()}

CORE = ("request", "policy", "secrets", "audit", "grants", "signing", "scrubbing", "approvals",
        "decision", "error_text", "policy_tools", "readiness", "signin_guard", "console",
        "identity", "sign_in", "http_routes", "metrics", *FOUNDATIONS)
STATE = ("grants", "secrets", "audit")
# name -> (the parts it constrains, what they never import)
RULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "core never imports mitmproxy, the addons, the CLI or runtime": (
        CORE, (MITMPROXY, "addons", "cli", "runtime", "admin_api", "devtools")),
    "addons never import runtime": (("addons",), ("runtime",)),
    "addons never import the CLI": (("addons",), ("cli", "admin_api", "devtools")),
    "state never imports the decision": (STATE, ("decision", "approvals", "signing")),
    "the scrubber imports no decision code": (("scrubbing",), ("decision", "approvals",
                                                               "signing")),
}
# The mitmproxy layer and the operator's entry points; everything else in broker_proxy is core.
OUTER = ("broker_proxy.addons", "broker_proxy.cli", "broker_proxy.admin_api",
         "broker_proxy.runtime", "broker_proxy.devtools")
# What the core never imports (the admin API is outer but the core may name its errors).
NEVER_IN_CORE = ("mitmproxy", "broker_proxy.addons", "broker_proxy.cli", "broker_proxy.runtime")
DEVTOOLS = ("broker_proxy.devtools",)
# The one way into the demo tools from the product: the `broker-proxy demo` command.
DEVTOOLS_DOOR = ("broker_proxy.cli.demo_cmd",)


def part_of(module: str) -> str | None:
    """The part of the map a module belongs to; None for a module that is not ours (stdlib,
    third-party) other than mitmproxy."""
    names = module.split(".")
    if names[0] == MITMPROXY:
        return MITMPROXY
    if names[0] != "broker_proxy":
        return None
    return names[1] if len(names) > 1 else "broker_proxy"


def below(part: str, layers: dict[str, frozenset[str]] = LAYERS) -> set[str]:
    """Every part ``part`` may import: the map read transitively."""
    found: set[str] = set()
    todo = list(layers.get(part, ()))
    while todo:
        lower = todo.pop()
        if lower not in found:
            found.add(lower)
            todo.extend(layers.get(lower, ()))
    return found


def map_problems(graph: ImportGraph, layers: dict[str, frozenset[str]] = LAYERS,
                 skip: Iterable[tuple[str, str]] = ()) -> list[str]:
    """Each import edge between two parts that the map does not allow, and each part of the
    tree the map does not place; ``skip``: (importer part, imported part) pairs left to a
    rule of their own."""
    skipped = set(skip)
    allowed = {part: below(part, layers) for part in layers}
    problems = []
    for part in sorted({p for m in graph.modules if (p := part_of(m)) is not None} - set(layers)):
        problems.append(f"not on the map: {part}")
    for module in sorted(graph.modules):
        importer = part_of(module)
        for target in sorted(graph.imports(module)):
            imported = part_of(target)
            if (imported is None or imported == importer or importer not in layers
                    or (importer, imported) in skipped):
                continue
            if imported not in allowed[importer]:
                problems.append(f"{importer} may not import {imported}: {module} -> {target}")
    return problems


def map_cycles(layers: dict[str, frozenset[str]] = LAYERS) -> list[str]:
    """Parts that reach themselves through the map: it must be a DAG."""
    return sorted(part for part in layers if part in below(part, layers))


def rule_problems(graph: ImportGraph, rule: str) -> list[str]:
    """The edges of the source, then of the map, that break one named rule."""
    parts, never = RULES[rule]
    importers = [m for m in graph.modules if part_of(m) in parts]
    forbidden = tuple("broker_proxy." + p if p != MITMPROXY else p for p in never)
    problems = [f"{rule}: {line}" for line in forbidden_imports(graph, importers, forbidden)]
    problems += [f"{rule}: the map lets {part} reach {lower}" for part in parts
                 for lower in sorted(below(part) & set(never))]
    return problems


def check(graph: ImportGraph) -> list[str]:
    """Every broken module contract, one line each; empty when the tree keeps them all."""
    core = [m for m in graph.modules if not under(m, *OUTER)]
    runtime = [m for m in graph.modules if not under(m, *DEVTOOLS, *DEVTOOLS_DOOR)]
    problems = [f"core imports the outer layer: {line}" for line in
                forbidden_imports(graph, core, NEVER_IN_CORE)]
    problems += [f"runtime imports devtools: {line}" for line in
                 forbidden_imports(graph, runtime, DEVTOOLS)]
    problems += [f"import cycle: {' <-> '.join(group)}" for group in cycles(graph)]
    return problems


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return build_graph(ROOTS)


def test_the_package_keeps_its_import_contracts(graph: ImportGraph) -> None:
    assert check(graph) == []


def test_every_import_follows_the_map(graph: ImportGraph) -> None:
    assert map_problems(graph) == []


def test_the_map_is_a_dag_without_package_cycles(graph: ImportGraph) -> None:
    assert map_cycles() == []
    parts: dict[str, set[str]] = {}
    for module in graph.modules:
        importer = part_of(module)
        assert importer is not None
        parts.setdefault(importer, set()).update(
            p for t in graph.imports(module) if (p := part_of(t)) not in (None, importer))
    package_graph = ImportGraph(modules=set(parts), edges=parts)
    assert cycles(package_graph) == []


@pytest.mark.parametrize("rule", list(RULES))
def test_each_rule_of_the_map_holds(graph: ImportGraph, rule: str) -> None:
    assert rule_problems(graph, rule) == []


def test_the_graph_sees_the_whole_package(graph: ImportGraph) -> None:
    assert {"broker_proxy.decision.broker", "broker_proxy.addons.broker",
            "broker_proxy.cli", "broker_proxy.request.outbound"} <= graph.modules
    assert "broker_proxy.request.outbound" in graph.edges["broker_proxy.decision.broker"]


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


def _broker_proxy(root: Path, files: dict[str, str]) -> ImportGraph:
    for name, text in files.items():
        path = root / "broker_proxy" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return build_graph({"broker_proxy": root / "broker_proxy"})


def test_checker_names_each_broken_contract(tmp_path: Path) -> None:
    problems = check(_broker_proxy(tmp_path, {
        "__init__.py": "",
        "addons/__init__.py": "",
        "addons/hooks.py": "import mitmproxy.http\n",
        "cli/__init__.py": "from broker_proxy import core\n",
        "core.py": "from mitmproxy import http\nfrom broker_proxy.addons.hooks import x\n",
        "runtime/__init__.py": "",
        "runtime/run.py": "def go():\n    from broker_proxy.devtools import echo\n",
        "devtools/__init__.py": "",
        "devtools/echo.py": "from broker_proxy.runtime import run\n",
    }))
    assert problems == [
        "core imports the outer layer: broker_proxy.core -> broker_proxy.addons.hooks",
        "core imports the outer layer: broker_proxy.core -> mitmproxy",
        "runtime imports devtools: broker_proxy.runtime.run -> broker_proxy.devtools.echo",
        "import cycle: broker_proxy.devtools.echo <-> broker_proxy.runtime.run",
    ]


def test_map_checker_names_each_edge_against_the_map(tmp_path: Path) -> None:
    graph = _broker_proxy(tmp_path, {
        "__init__.py": "",
        "grants/__init__.py": "",
        "grants/store.py": "def f():\n    from broker_proxy.decision import broker\n",
        "decision/__init__.py": "",
        "decision/broker.py": "from broker_proxy.request.outbound import Allowed\n"
                              "from broker_proxy.grants import store\nimport json\n",
        "request/__init__.py": "",
        "request/outbound.py": "",
        "scrubbing/__init__.py": "",
        "scrubbing/scrubber.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                 "    from broker_proxy.signing import aws_resign\n",
        "signing/__init__.py": "",
        "signing/aws_resign.py": "",
        "gadgets.py": "from broker_proxy.request import outbound\n",
    })
    assert map_problems(graph) == [
        "not on the map: gadgets",
        "grants may not import decision: broker_proxy.grants.store -> broker_proxy.decision"
        ".broker",
        "scrubbing may not import signing: broker_proxy.scrubbing.scrubber -> "
        "broker_proxy.signing.aws_resign",
    ]
    assert rule_problems(graph, "state never imports the decision") == [
        "state never imports the decision: broker_proxy.grants.store -> "
        "broker_proxy.decision.broker"]


def test_map_checker_finds_a_cycle_in_the_map() -> None:
    layers = {**LAYERS, "request": frozenset({"decision"})}
    assert "request" in map_cycles(layers) and "decision" in map_cycles(layers)
    assert map_cycles() == []
