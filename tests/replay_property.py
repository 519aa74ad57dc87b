"""A property every end-to-end log must have: `policy replay` of the log against the policy
that wrote it reports no change.

Called from the teardown of the end-to-end fixtures (conftest's `stack`, the approval, AWS and
example-policy stacks), so it holds over the logs of those runs, whatever their tests did:
allowed and refused requests, challenges, approvals per request, AWS re-signing on global and
regional names. A log whose policy changed during the run (a reload, or another file) is not
the subject of the property and is skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

from broker_proxy.policy.loader import load_policy
from broker_proxy.policy_tools.replay import replay_log

_POLICY_EVENTS = ("policy_loaded", "policy_reloaded")


def assert_replay_unchanged(audit_log: Path, policy_file: Path) -> None:
    policy = load_policy(policy_file)
    digests = set()
    with open(audit_log, encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if record.get("event") in _POLICY_EVENTS:
                digests.add(record.get("policy"))
    if digests - {policy.digest}:
        return  # written (partly) under another policy
    report = replay_log(policy, audit_log)
    assert not report.now_refused and not report.now_allowed and not report.unreadable, (
        f"replaying {audit_log} against the policy that wrote it changed decisions: "
        f"{report.as_dict()}")
