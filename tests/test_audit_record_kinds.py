"""Every kind of record the code can write validates against the published record schema.

The kinds are read from the source, not from a list kept by hand: every call that appends to an
audit log (`<...>audit.append(EVENT, decision=..., ...)`, the wrappers that forward to it, and the
broker's `_record(request, grant, DECISION, ...)`) is found with `ast`, its event names and
decision values are resolved (string literals, module constants, dict literals, `a if c else b`),
and one record of each (event, decision) is written with the real `AuditLog` and checked by the
one verifier `audit verify`, the report and the console share.
"""

from __future__ import annotations

import ast
import importlib
import itertools
from pathlib import Path

from broker_proxy.audit.events import EVENTS
from broker_proxy.audit.evidence import verify_evidence
from broker_proxy.audit.log import AuditLog
from broker_proxy.audit.record_schema import RECORD_SCHEMA_FILE, load_schema

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(ROOT / "broker_proxy").rglob("*.py"), *(ROOT / "addons").glob("*.py")])
# Calls whose first argument is an event name, and the broker's record helper, whose third
# positional argument is the decision.
APPEND_NAMES = {"append", "_audit"}
# What builds a request record (request, grant, decision, ...): decision/request_record.py.
REQUEST_RECORD_NAMES = {"_record", "request_fields"}


def _module_of(path: Path) -> object | None:
    if path.name == "__main__.py":
        return None  # importing it would run the command line
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[0] == "addons":
        parts[0] = "broker_proxy.addons"  # installed under the package name
    try:
        return importlib.import_module(".".join(parts))
    except ImportError:
        return None


def _strings(node: ast.AST | None, module: object | None,
             local: dict[str, ast.AST] | None = None) -> set[str | None] | None:
    """Every value `node` can take, or None when it cannot be known from the source."""
    if node is None:
        return None
    if isinstance(node, ast.Name) and local and node.id in local:
        return _strings(local[node.id], module)
    if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, str)):
        return {node.value}
    if isinstance(node, ast.IfExp):
        body, orelse = _strings(node.body, module), _strings(node.orelse, module)
        return None if body is None or orelse is None else body | orelse
    if isinstance(node, ast.Name) and module is not None:
        value = getattr(module, node.id, None)
        return {value} if isinstance(value, str) else None
    if isinstance(node, ast.Subscript):
        table = node.value
        if isinstance(table, ast.Dict):
            values = [_strings(v, module) for v in table.values]
            return None if any(v is None for v in values) else set().union(*values)  # type: ignore[arg-type]
        if isinstance(table, ast.Name) and module is not None:
            mapping = getattr(module, table.id, None)
            if isinstance(mapping, dict) and all(isinstance(v, str) for v in mapping.values()):
                return set(mapping.values())
    return None


def _calls_with_their_names(tree: ast.AST) -> list[tuple[ast.Call, dict[str, ast.AST]]]:
    """Every call inside a function, with the names that function assigns (innermost wins)."""
    calls: dict[int, tuple[ast.Call, dict[str, ast.AST]]] = {}
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        local = {target.id: stmt.value for stmt in ast.walk(function)
                 if isinstance(stmt, ast.Assign)
                 for target in stmt.targets if isinstance(target, ast.Name)}
        for node in ast.walk(function):
            if isinstance(node, ast.Call):
                calls[id(node)] = (node, local)
    return list(calls.values())


def _audit_calls() -> list[tuple[str, int, set[str | None], set[str | None]]]:
    """(file, line, events, decisions) for every audit append and request record in the code."""
    found = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        module = _module_of(path)
        for node, local in _calls_with_their_names(tree):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            where = (str(path.relative_to(ROOT)), node.lineno)
            if name in REQUEST_RECORD_NAMES and len(node.args) >= 3:
                decisions = _strings(node.args[2], module, local)
                assert decisions is not None, f"{where}: decision not known from the source"
                found.append((*where, {"request"}, decisions))
                continue
            if name not in APPEND_NAMES or not node.args:
                continue
            receiver = ast.unparse(func.value) if isinstance(func, ast.Attribute) else ""
            if name == "append" and "audit" not in receiver.lower():
                continue  # a list's append
            events = _strings(node.args[0], module, local)
            if events is None:
                continue  # a wrapper's own parameter: its callers are found instead
            keywords = {k.arg: k.value for k in node.keywords if k.arg}
            if "decision" in keywords:
                decisions = _strings(keywords["decision"], module, local)
            else:  # none given: null, unless a **mapping (found on its own) brings one
                decisions = {None} if all(k.arg for k in node.keywords) else set()
            assert decisions is not None, f"{where}: decision not known from the source"
            found.append((*where, events, decisions))
    return found


def test_the_source_holds_the_record_kinds_it_is_known_to_write() -> None:
    calls = _audit_calls()
    events = set().union(*(c[2] for c in calls))
    decisions = set().union(*(c[3] for c in calls))
    # A sanity floor: the scan must see the writers, or the tests below prove nothing.
    assert {"request", "response", "request_approved", "grant_issued", "grant_revoked",
            "policy_reloaded", "proxy_started", "client_cert", "grants_purged"} <= events
    assert {"allow", "deny", "held"} <= decisions


def test_every_event_the_code_writes_is_a_documented_event() -> None:
    for file, line, events, _ in _audit_calls():
        undocumented = {e for e in events if e not in EVENTS}
        assert not undocumented, f"{file}:{line} writes {undocumented}, not in events.py"


def test_every_decision_the_code_writes_is_in_the_published_schema() -> None:
    allowed = set(load_schema(RECORD_SCHEMA_FILE)["properties"]["decision"]["enum"])
    for file, line, _, decisions in _audit_calls():
        assert decisions <= allowed, f"{file}:{line} writes decision {decisions - allowed}"


def test_one_record_of_every_kind_passes_the_one_verifier(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit.log", tmp_path / "audit.key")
    kinds = sorted({(e, d) for _, _, events, decisions in _audit_calls()
                    for e, d in itertools.product(events, decisions or {None})},
                   key=str)
    for event, decision in kinds:
        assert event is not None
        log.append(event, decision=decision, reason="x", grant="g_0123456789abcdef",
                   secrets=["api_key"], method="POST", scheme="https", host="h", port=443,
                   path="/", status=403, by="cli:test")
    log.close()
    evidence = verify_evidence(tmp_path / "audit.log", tmp_path / "audit.key")
    assert evidence.ok, evidence.verdict
    assert evidence.records == len(kinds)


def test_a_held_request_record_verifies(tmp_path: Path) -> None:
    """The record `audit verify` used to refuse: decision `held`."""
    log = AuditLog.open(tmp_path / "audit.log", tmp_path / "audit.key")
    log.append("request", decision="held", reason="approval_required", grant="g_1",
               secrets=["payments"], method="POST", scheme="https", host="h", port=443,
               path="/v1/refunds", hold="h_0123456789abcdef", digest="0" * 64)
    log.close()
    assert verify_evidence(tmp_path / "audit.log", tmp_path / "audit.key").ok
