"""The report as text (for a terminal or a ticket) and as CSV (for a spreadsheet).

Both start with the integrity headline: a reviewer who reads one line knows whether the rest can
be trusted. Strings from the log (tasks, paths: agent-controlled) are shown printable only.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from broker_proxy.audit.report_actions import action_rows
from broker_proxy.audit.report_llm import usd


def _shown(value: object) -> str:
    text = "-" if value is None else str(value)
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _statuses(statuses: dict[str, int]) -> str:
    """`200 x2, no answer x1`: the report's "none" key is a use whose answer never came."""
    return ", ".join(f"{'no answer' if code == 'none' else code} x{count}"
                     for code, count in statuses.items()) or "no answer"


def _aligned(headers: list[str], rows: list[list[object]]) -> list[str]:
    """A table whose columns line up, numbers right-aligned, indented by two spaces."""
    cells = [[_shown(cell) for cell in row] for row in rows]
    widths = [max(len(text) for text in column) for column in zip(headers, *cells, strict=True)]
    numeric = [all(isinstance(row[i], int) for row in rows) and bool(rows)
               for i in range(len(headers))]

    def line(texts: list[str]) -> str:
        return "  " + "  ".join(text.rjust(width) if right else text.ljust(width)
                                for text, width, right in zip(texts, widths, numeric,
                                                              strict=True)).rstrip()
    return [line(headers)] + [line(row) for row in cells]


def _csv_detail(**values: object) -> str:
    """`key=value` pairs for the CSV's detail cell, without the ones the log does not say."""
    return " ".join(f"{key}={value}" for key, value in values.items() if value is not None)


def render_text(report: dict[str, Any]) -> str:
    out = _heading_text(report)
    out.append(f"GRANTS ({len(report['grants'])})")
    for grant in report["grants"]:
        out += _grant_text(grant)
    out += _totals_text(report)
    out += _llm_summary(report["summary"])
    return "\n".join(out) + "\n"


def _heading_text(report: dict[str, Any]) -> list[str]:
    """The integrity headline first, then what the report covers."""
    integrity = report["integrity"]
    out = [integrity["headline"], f"re-verify: {integrity['reverify']}", ""]
    scope = {k: v for k, v in report["scope"].items() if v is not None}
    out.append("broker-proxy access review "
               f"({report['schema']}), {report['records']} records in scope"
               + (", " + ", ".join(f"{k}={_shown(v)}" for k, v in scope.items()) if scope else ""))
    out.append(f"period: {_shown(report['period']['first'])} .. {_shown(report['period']['last'])}")
    out.append("")
    return out


def _grant_text(grant: dict[str, Any]) -> list[str]:
    """One grant: who asked, who allowed it, what it was used for, what it was refused."""
    out = [f"grant {grant['id']}  agent={_shown(grant['agent'])}  task={_shown(grant['task'])}",
           f"  issued {_shown(grant['issued_at'])} by {_shown(grant['issued_by'])}; "
           f"secrets {','.join(map(_shown, grant['secrets'])) or '-'}; "
           f"expires {_shown(grant['expires_at'])}; max uses {_shown(grant['max_uses'])}"]
    approval = grant["approval"]
    if approval:
        out.append(f"  approval: {_shown(approval['decision'] or 'pending')} by "
                   f"{_shown(approval['by'])} at {_shown(approval['at'])} "
                   f"(waited {_shown(approval['waited_seconds'])} s)")
    out += _held_text(grant["held_requests"])
    out.append(f"  uses: {grant['uses']} (left {_shown(grant['uses_left'])}); "
               f"requests without a secret: {grant['requests_without_secret']}")
    if grant["uses_by_target"]:
        out += ["  " + line for line in _aligned(
            # the destination last: a long path does not push the other columns away
            ["secret", "count", "first", "last", "statuses", "method", "destination"],
            [[use["secret"], use["count"], use["first"], use["last"],
              _statuses(use["statuses"]), use["method"],
              f"{use['scheme']}://{use['host']}:{use['port']}{use['path']}"]
             for use in grant["uses_by_target"]])]
    for refusal in grant["refusals"]:
        targets = ", ".join(f"{_shown(d['target'])} x{d['count']}"
                            for d in refusal["destinations"])
        out.append(f"  refused {refusal['reason']} x{refusal['count']}: {targets}")
    out += _llm_lines(grant.get("llm"))
    if rows := action_rows(grant.get("actions")):
        out += ["  " + line for line in _aligned(
            ["protocol", "action", "uses", "refused", "name"],
            [[protocol, action, uses, refused, _shown(name)]
             for protocol, action, name, uses, refused in rows])]
    scrubbed = grant["scrubbed"]
    if scrubbed["responses"] or grant["withheld"]:
        out.append(f"  scrubbed: {scrubbed['responses']} response(s), "
                   f"{scrubbed['occurrences']} occurrence(s); withheld: {grant['withheld']}")
    if grant["revoked"]:
        revoked = grant["revoked"]
        out.append(f"  revoked {_shown(revoked['at'])} by {_shown(revoked['by'])} "
                   f"({_shown(revoked['reason'])})")
    if grant["expired_at"]:
        out.append(f"  expired {_shown(grant['expired_at'])}")
    return out


def _held_text(held: dict[str, Any]) -> list[str]:
    """The grant's requests that waited for a person, and what became of each."""
    if not held["count"]:
        return []
    outcomes = ", ".join(f"{k} {v}" for k, v in held["outcomes"].items())
    out = [f"  held for approval: {held['count']} ({outcomes or 'none decided'})"]
    for item in held["items"]:
        out.append(f"    {_shown(item['held_at'])} {_shown(item['method'])} "
                   f"{_shown(item['target'])}{_shown(item['path'])} "
                   f"[{','.join(map(_shown, item['secrets']))}]: "
                   f"{_shown(item['outcome'])} ({_shown(item['choice'])}) by "
                   f"{_shown(item['by'])} after {_shown(item['waited_seconds'])} s"
                   + (f"; {_shown(item['reason'])}" if item["reason"] else ""))
    return out


def _totals_text(report: dict[str, Any]) -> list[str]:
    """Refusals, anomalies and policy changes over all grants; per agent and per secret."""
    out = ["", f"REFUSALS ({sum(r['count'] for r in report['refusals'])})"]
    for refusal in report["refusals"]:
        targets = ", ".join(f"{_shown(d['target'])} x{d['count']}"
                            for d in refusal["destinations"])
        out.append(f"  {refusal['reason']} x{refusal['count']}: {targets}")
    out += ["", f"ANOMALIES ({len(report['anomalies'])})"]
    for anomaly in report["anomalies"]:
        out.append(f"  [{anomaly['kind']}] grant {_shown(anomaly['grant'])}: "
                   f"{_shown(anomaly['message'])} (x{anomaly['count']}; records "
                   f"{' '.join(map(_shown, anomaly['records']))})")
    if report["policy_changes"]:
        out += ["", "POLICY"]
        for change in report["policy_changes"]:
            out.append(f"  {_shown(change['ts'])} {change['event']} {_shown(change['policy'])}")
    out += ["", "PER AGENT"]
    out += _aligned(["agent", "grants", "uses", "refusals", "scrubbed", "revoked"],
                    [[row["agent"], row["grants"], row["uses"], row["refusals"],
                      row["scrubbed"], row["revoked"]] for row in report["summary"]["agents"]])
    out += ["", "PER SECRET"]
    out += _aligned(["secret", "grants", "uses", "destinations"],
                    [[row["secret"], row["grants"], row["uses"],
                      " ".join(map(_shown, row["destinations"])) or "-"]
                     for row in report["summary"]["secrets"]])
    return out


def _limits(limited: dict[str, int]) -> str:
    return ", ".join(f"{reason} x{count}" for reason, count in limited.items()) or "-"


def _llm_lines(llm: dict[str, Any] | None) -> list[str]:
    """A grant's LLM use: totals, one row per model, and the refusals its limits caused."""
    if not llm:
        return []
    out = [f"  llm: {llm['requests']} request(s), {llm['input_tokens']} input / "
           f"{llm['output_tokens']} output tokens, cost USD {usd(llm['cost_usd'])}; "
           f"usage unreadable: {llm['usage_unreadable']}"]
    if llm["by_model"]:
        out += ["  " + line for line in _aligned(
            ["model", "requests", "input", "output", "cost USD", "unreadable"],
            [[row["model"], row["requests"], row["input_tokens"], row["output_tokens"],
              usd(row["cost_usd"]), row["usage_unreadable"]] for row in llm["by_model"]])]
    if llm["limit_refusals"]:
        out.append(f"  refused by limits: {_limits(llm['limit_refusals'])}")
    return out


def _llm_summary(summary: dict[str, Any]) -> list[str]:
    if not summary.get("llm_agents") and not summary.get("llm_models"):
        return []
    out = ["", "LLM USE PER AGENT"]
    out += _aligned(["agent", "requests", "input", "output", "cost USD", "unreadable",
                     "refused by limits"],
                    [[row["agent"], row["requests"], row["input_tokens"], row["output_tokens"],
                      usd(row["cost_usd"]), row["usage_unreadable"],
                      _limits(row["limit_refusals"])] for row in summary["llm_agents"]])
    out += ["", "LLM USE PER MODEL"]
    out += _aligned(["model", "grants", "requests", "input", "output", "cost USD",
                     "unreadable"],
                    [[row["model"], row["grants"], row["requests"], row["input_tokens"],
                      row["output_tokens"], usd(row["cost_usd"]), row["usage_unreadable"]]
                     for row in summary["llm_models"]])
    return out


def _llm_detail(row: dict[str, Any]) -> str:
    return _csv_detail(input_tokens=row["input_tokens"], output_tokens=row["output_tokens"],
                       cost_usd=usd(row["cost_usd"]), usage_unreadable=row["usage_unreadable"])


CSV_COLUMNS = ("section", "grant", "agent", "task", "secret", "method", "scheme", "host", "port",
               "path", "reason", "count", "first", "last", "detail")


def render_csv(report: dict[str, Any]) -> str:
    """One table: a `section` column says what each row is; the first row is the integrity."""
    buffer = io.StringIO()
    writer = _SafeWriter(csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n"))
    integrity = report["integrity"]
    # The headline first, before the header row, so the file's first line says it.
    buffer.write(_csv_line(["integrity", "ok" if integrity["ok"] else "FAILED",
                            integrity["headline"], integrity["reverify"]]))
    writer.writeheader()
    for grant in report["grants"]:
        base = {"grant": grant["id"], "agent": grant["agent"], "task": grant["task"]}
        _grant_rows(writer, base, grant)
        _grant_outcome_rows(writer, base, grant)
    _total_rows(writer, report)
    return buffer.getvalue()


def _grant_rows(writer: _SafeWriter, base: dict[str, object], grant: dict[str, Any]) -> None:
    """The grant, its approval, its held requests, its uses and its refusals."""
    writer.writerow({**base, "section": "grant", "secret": " ".join(grant["secrets"]),
                     "count": grant["uses"], "first": grant["issued_at"],
                     "detail": _csv_detail(issued_by=grant["issued_by"],
                                           max_uses=grant["max_uses"],
                                           uses_left=grant["uses_left"])})
    if grant["approval"]:
        approval = grant["approval"]
        writer.writerow({**base, "section": "approval", "reason": approval["decision"],
                         "first": approval["at"],
                         "detail": _csv_detail(by=approval["by"],
                                               waited=approval["waited_seconds"])})
    for item in grant["held_requests"]["items"]:
        host, _, port = item["target"].partition("://")[2].rpartition(":")
        writer.writerow({**base, "section": "held", "secret": " ".join(item["secrets"]),
                         "method": item["method"], "host": host, "port": port,
                         "path": item["path"], "reason": item["outcome"],
                         "first": item["held_at"], "last": item["decided_at"],
                         "detail": _csv_detail(hold=item["hold"], choice=item["choice"],
                                               by=item["by"],
                                               waited=item["waited_seconds"])})
    for use in grant["uses_by_target"]:
        writer.writerow({**base, "section": "use", "secret": use["secret"],
                         "method": use["method"], "scheme": use["scheme"],
                         "host": use["host"], "port": use["port"], "path": use["path"],
                         "count": use["count"], "first": use["first"], "last": use["last"],
                         "detail": _statuses(use["statuses"]).replace(",", "")})
    for refusal in grant["refusals"]:
        for destination in refusal["destinations"]:
            host, _, port = destination["target"].rpartition(":")
            writer.writerow({**base, "section": "refusal", "reason": refusal["reason"],
                             "host": host, "port": port, "count": destination["count"]})


def _grant_outcome_rows(writer: _SafeWriter, base: dict[str, object],
                        grant: dict[str, Any]) -> None:
    """What the grant's answers needed (scrubbed, withheld), its LLM use, actions, revocation."""
    if grant["scrubbed"]["responses"]:
        writer.writerow({**base, "section": "scrubbed",
                         "count": grant["scrubbed"]["responses"],
                         "detail": f"occurrences={grant['scrubbed']['occurrences']}"})
    if grant["withheld"]:
        writer.writerow({**base, "section": "withheld", "count": grant["withheld"]})
    for row in (grant.get("llm") or {}).get("by_model", ()):
        # The model goes in `detail`: the columns are a contract, a new one would break it.
        writer.writerow({**base, "section": "llm", "count": row["requests"],
                         "detail": f"model={row['model'] or '-'} " + _llm_detail(row)})
    for protocol, action, name, uses, refused in action_rows(grant.get("actions")):
        # The action in `method`, the name in `path`'s place would mislead: it goes in detail.
        writer.writerow({**base, "section": protocol, "method": action, "count": uses,
                         "detail": _csv_detail(name=name, refused=refused)})
    if grant["revoked"]:
        writer.writerow({**base, "section": "revoked", "reason": grant["revoked"]["reason"],
                         "first": grant["revoked"]["at"],
                         "detail": _csv_detail(by=grant["revoked"]["by"])})


def _total_rows(writer: _SafeWriter, report: dict[str, Any]) -> None:
    """Refusals and anomalies over all grants; per agent, LLM use, per secret."""
    for refusal in report["refusals"]:
        writer.writerow({"section": "refusals_total", "reason": refusal["reason"],
                         "count": refusal["count"]})
    for anomaly in report["anomalies"]:
        writer.writerow({"section": "anomaly", "grant": anomaly["grant"],
                         "reason": anomaly["kind"], "count": anomaly["count"],
                         "first": anomaly["first"], "last": anomaly["last"],
                         "detail": f"{anomaly['message']}; records "
                                   + " ".join(anomaly["records"])})
    for row in report["summary"]["agents"]:
        writer.writerow({"section": "agent", "agent": row["agent"], "count": row["uses"],
                         "detail": f"grants={row['grants']} refusals={row['refusals']} "
                                   f"scrubbed={row['scrubbed']} revoked={row['revoked']}"})
    for row in report["summary"].get("llm_agents", ()):
        writer.writerow({"section": "llm_agent", "agent": row["agent"], "count": row["requests"],
                         "detail": _llm_detail(row) + (" limit_refusals=" + ",".join(
                             f"{k}:{v}" for k, v in row["limit_refusals"].items())
                             if row["limit_refusals"] else "")})
    for row in report["summary"].get("llm_models", ()):
        writer.writerow({"section": "llm_model", "count": row["requests"],
                         "detail": f"model={row['model'] or '-'} grants={row['grants']} "
                                   + _llm_detail(row)})
    for row in report["summary"]["secrets"]:
        writer.writerow({"section": "secret", "secret": row["secret"], "count": row["uses"],
                         "detail": f"grants={row['grants']} destinations="
                                   + " ".join(row["destinations"])})


def _csv_line(cells: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue()


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> object:
    """A task or path from an agent must not become a spreadsheet formula when opened."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


class _SafeWriter:
    def __init__(self, writer: csv.DictWriter[str]) -> None:
        self._writer = writer

    def writeheader(self) -> None:
        self._writer.writeheader()

    def writerow(self, row: dict[str, object]) -> None:
        self._writer.writerow({name: _cell(value) for name, value in row.items()})
