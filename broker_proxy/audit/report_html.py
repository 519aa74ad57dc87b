"""The report as one self-contained HTML file an auditor can archive or print.

No script, no external stylesheet, font or image: the charts are inline SVG drawn here, and a
Content-Security-Policy forbids loading anything, so the file renders the same offline in ten
years. Every string from the log is HTML-escaped (tasks and paths are agent-controlled).
"""

from __future__ import annotations

from html import escape
from typing import Any

from broker_proxy.audit.report_actions import action_rows
from broker_proxy.audit.report_llm import usd

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1b1f24;max-width:1200px}
h1{font-size:20px;margin:8px 0}h2{font-size:17px;margin:22px 0 6px;border-bottom:1px solid #ccd}
h3{font-size:15px;margin:14px 0 4px}
.banner{padding:10px 14px;border-radius:6px;font-weight:600}
.ok{background:#e6f4ea;color:#14532d}.bad{background:#fde8e8;color:#7f1d1d}
table{border-collapse:collapse;margin:4px 0 10px;max-width:100%}td,th{border:1px solid #d0d4da;
padding:3px 7px;text-align:left;vertical-align:top;white-space:nowrap}
td.w{white-space:normal;overflow-wrap:anywhere;min-width:8em}
h3{overflow-wrap:anywhere}th{background:#f3f4f6}code{font-size:12px}
.charts{display:flex;gap:24px;flex-wrap:wrap}.muted{color:#5b6470}
@media print{.charts{break-inside:avoid}}
"""


def _e(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return escape("-" if value is None else str(value))


def statuses_shown(statuses: dict[str, int]) -> str:
    """`200 x2, no answer x1`: the report's "none" key is a use whose answer never came."""
    return ", ".join(f"{'no answer' if code == 'none' else code} x{count}"
                     for code, count in statuses.items()) or "no answer"


def _approval_shown(approval: dict[str, Any]) -> str:
    if not approval.get("decision"):
        return "pending"
    return f"{approval['decision']} by {approval.get('by') or '-'} after " \
        f"{approval.get('waited_seconds')} s"


_WRAPPED = frozenset({"path", "what", "destinations", "records", "revoked", "log", "problem",
                      "destination", "refused by limits", "name"})


def _table(headers: list[str], rows: list[list[object]], empty: str = "none") -> str:
    if not rows:
        return f'<p class="muted">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    # Free text (paths, tasks, destinations, messages) wraps anywhere, so a long one stays
    # inside the page; the short cells (times, counts, names) never break.
    cell = ['<td class="w">' if h in _WRAPPED else "<td>" for h in headers]
    body = "".join("<tr>" + "".join(f"{cell[i]}{_e(c)}</td>" for i, c in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def bar_chart(title: str, items: list[tuple[str, int]], colour: str) -> str:
    """A horizontal bar chart as inline SVG (labels left, bars scaled to the largest value)."""
    rows = items[:20]
    height = 28 + 22 * max(len(rows), 1)
    width, label_w, bar_w = 460, 170, 230
    top = max((value for _, value in rows), default=0) or 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="{_e(title)}">',
             f'<text x="0" y="16" font-size="14" font-weight="600">{_e(title)}</text>']
    if not rows:
        parts.append('<text x="0" y="40" font-size="12" fill="#5b6470">no data</text>')
    for index, (label, value) in enumerate(rows):
        y = 28 + 22 * index
        length = round(bar_w * value / top)
        parts.append(f'<text x="{label_w - 6}" y="{y + 14}" font-size="12" '
                     f'text-anchor="end">{_e(label)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 2}" width="{max(length, 1)}" height="16" '
                     f'fill="{colour}"/>')
        parts.append(f'<text x="{label_w + length + 4}" y="{y + 14}" '
                     f'font-size="12">{value}</text>')
    parts.append("</svg>")
    return "".join(parts)


def held_outcomes(held: dict[str, Any]) -> str:
    """`approved 2, denied 1, timed_out 1`: how the grant's held requests ended."""
    return ", ".join(f"{k} {v}" for k, v in held["outcomes"].items()) or "none decided"


def render_html(report: dict[str, Any]) -> str:
    out = _html_heading(report)
    out += _html_overview(report)
    out.append(f"<h2>Grants ({len(report['grants'])})</h2>")
    for grant in report["grants"]:
        out += _html_grant(grant)
    out += _html_integrity(report["integrity"])
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _html_heading(report: dict[str, Any]) -> list[str]:
    """The document head and the integrity banner: the verdict comes first, as in every format."""
    integrity = report["integrity"]
    banner_class = "ok" if integrity["ok"] else "bad"
    return [
        # The verdict is on the file's first line, as in every format.
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(integrity['headline'])}</title>",
        # Nothing may be fetched: the file must be complete evidence by itself.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">",
        f"<style>{_STYLE}</style></head><body>",
        f'<div class="banner {banner_class}" id="integrity">{_e(integrity["headline"])}</div>',
        f"<p>Re-verify: <code>{_e(integrity['reverify'])}</code></p>",
        "<h1>broker-proxy access review</h1>",
        f"<p class=\"muted\">{_e(report['schema'])}; {report['records']} records in scope; "
        f"period {_e(report['period']['first'])} .. {_e(report['period']['last'])}; scope "
        + _e(", ".join(f"{k}={v}" for k, v in report["scope"].items() if v is not None)
             or "everything") + "</p>",
    ]


def _html_overview(report: dict[str, Any]) -> list[str]:
    """Charts, per agent and per secret, LLM use, anomalies and refusals over all grants."""
    daily = [(row["day"], row["uses"]) for row in report["daily"]]
    refusals = [(row["reason"], row["count"]) for row in report["refusals"]]
    out = ['<div class="charts">'
           + bar_chart("Secret uses per day", daily, "#2563eb")
           + bar_chart("Refusals per reason", refusals, "#dc2626") + "</div>"]
    out.append("<h2>Per agent</h2>")
    out.append(_table(["agent", "grants", "uses", "refusals", "scrubbed", "revoked"],
                      [[r["agent"], r["grants"], r["uses"], r["refusals"], r["scrubbed"],
                        r["revoked"]] for r in report["summary"]["agents"]]))
    out.append("<h2>Per secret</h2>")
    out.append(_table(["secret", "grants", "uses", "destinations"],
                      [[r["secret"], r["grants"], r["uses"], " ".join(r["destinations"])]
                       for r in report["summary"]["secrets"]]))
    out += _llm_summary(report["summary"])
    out.append(f"<h2>Anomalies ({len(report['anomalies'])})</h2>")
    out.append(_table(["kind", "grant", "what", "count", "first", "records"],
                      [[a["kind"], a["grant"], a["message"], a["count"], a["first"],
                        " ".join(a["records"])] for a in report["anomalies"]],
                      empty="no anomalies"))
    out.append("<h2>Refusals</h2>")
    out.append(_table(["reason", "count", "destinations"],
                      [[r["reason"], r["count"],
                        ", ".join(f"{d['target']} x{d['count']}" for d in r["destinations"])]
                       for r in report["refusals"]], empty="no refusals"))
    return out


def _html_grant(grant: dict[str, Any]) -> list[str]:
    """One grant: its issue and end, its uses, LLM use, actions, held requests, refusals."""
    out = [f"<h3>{_e(grant['id'])} &middot; {_e(grant['agent'])} &middot; "
           f"{_e(grant['task'])}</h3>"]
    approval = grant["approval"] or {}
    revoked = grant["revoked"] or {}
    out.append(_table(
        ["issued", "by", "secrets", "expires", "max uses", "uses", "left", "approval",
         "revoked"],
        [[grant["issued_at"], grant["issued_by"], " ".join(grant["secrets"]),
          grant["expires_at"], grant["max_uses"], grant["uses"], grant["uses_left"],
          _approval_shown(approval) if approval else None,
          (f"{revoked.get('at')} by {revoked.get('by')} ({revoked.get('reason')})")
          if revoked else None]]))
    out.append(_table(["secret", "method", "destination", "count", "first", "last",
                       "statuses"],
                      [[u["secret"], u["method"],
                        f"{u['scheme']}://{u['host']}:{u['port']}{u['path']}",
                        u["count"], u["first"], u["last"],
                        statuses_shown(u["statuses"])]
                       for u in grant["uses_by_target"]], empty="no secret used"))
    out += _llm_grant(grant.get("llm"))
    if rows := action_rows(grant.get("actions")):
        out.append(_table(["protocol", "action", "name", "uses", "refused"],
                          [list(row) for row in rows]))
    if grant["held_requests"]["count"]:
        out.append(f"<p>Held for approval: {grant['held_requests']['count']} ("
                   + _e(held_outcomes(grant["held_requests"])) + ")</p>")
        out.append(_table(["held", "request", "secrets", "outcome", "choice", "by",
                           "waited s", "reason"],
                          [[h["held_at"], f"{h['method']} {h['target']}{h['path']}",
                            " ".join(h["secrets"]), h["outcome"], h["choice"], h["by"],
                            h["waited_seconds"], h["reason"]]
                           for h in grant["held_requests"]["items"]]))
    if grant["refusals"] or grant["scrubbed"]["responses"] or grant["withheld"]:
        out.append(_table(["refused", "count", "destinations"],
                          [[r["reason"], r["count"],
                            ", ".join(f"{d['target']} x{d['count']}"
                                      for d in r["destinations"])]
                           for r in grant["refusals"]]))
        out.append(f"<p>Scrubbed responses: {grant['scrubbed']['responses']} "
                   f"({grant['scrubbed']['occurrences']} occurrences); withheld answers: "
                   f"{grant['withheld']}</p>")
    return out


def _html_integrity(integrity: dict[str, Any]) -> list[str]:
    """Each chain's verdict and the signed checkpoints, at the end as the details."""
    out = ["<h2>Integrity</h2>",
           _table(["log", "verifies", "records", "files", "torn lines recovered", "problem"],
                  [[c["log"], c["ok"], c["records"], len(c["files"]),
                    c["torn_lines_recovered"], c["problem"]] for c in integrity["chains"]])]
    if integrity["checkpoints"]:
        cp = integrity["checkpoints"]
        out.append(f"<p>Signed checkpoints: {cp['count']} in {_e(cp['file'])}, key "
                   f"<code>{_e(cp['key'])}</code>; {_e(cp['problem'] or 'all match')}</p>")
    return out


def _limits(limited: dict[str, int]) -> str:
    return ", ".join(f"{reason} x{count}" for reason, count in limited.items())


def _llm_rows(rows: list[dict[str, Any]], first: str) -> list[list[object]]:
    return [[row[first], row["requests"], row["input_tokens"], row["output_tokens"],
             usd(row["cost_usd"]), row["usage_unreadable"]] for row in rows]


_LLM_HEADERS = ["requests", "input tokens", "output tokens", "cost USD", "usage unreadable"]


def _llm_summary(summary: dict[str, Any]) -> list[str]:
    """LLM use and cost per agent and per model, with the refusals limits caused per agent."""
    agents, models = summary.get("llm_agents") or [], summary.get("llm_models") or []
    if not agents and not models:
        return []
    return ['<h2 id="llm">LLM use and cost</h2>', "<h3>Per agent</h3>",
            _table(["agent", *_LLM_HEADERS, "refused by limits"],
                   [[*row, _limits(agent["limit_refusals"]) or None]
                    for row, agent in zip(_llm_rows(agents, "agent"), agents, strict=True)]),
            "<h3>Per model</h3>",
            _table(["model", "grants", *_LLM_HEADERS],
                   [[m["model"], m["grants"], *row[1:]]
                    for row, m in zip(_llm_rows(models, "model"), models, strict=True)],
                   empty="no LLM answers")]


def _llm_grant(llm: dict[str, Any] | None) -> list[str]:
    if not llm:
        return []
    out = [_table(["model", *_LLM_HEADERS], _llm_rows(llm["by_model"], "model"),
                  empty="no LLM answers")]
    if llm["limit_refusals"]:
        out.append(f"<p>Refused by limits: {_e(_limits(llm['limit_refusals']))}</p>")
    return out
