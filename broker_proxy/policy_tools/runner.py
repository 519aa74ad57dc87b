"""Run policy test cases through ``Broker.decide`` and say, case by case, what happened.

Each test file gets a fresh throwaway harness (store, audit log, fake secrets), so one file's
grants never leak into another's answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from broker_proxy.policy.loader import PolicyError, load_policy
from broker_proxy.policy.model import Policy
from broker_proxy.policy_tools.cases import Expectation, TestCase, TestFile
from broker_proxy.policy_tools.harness import DecisionHarness, TestGrant, throwaway_harness
from broker_proxy.policy_tools.request_builder import Placement, RequestError, build_request
from broker_proxy.request.outbound import Denied, OutboundRequest, Verdict

PLACEHOLDER_MARK = "{placeholder}"


@dataclass(frozen=True, slots=True)
class CaseResult:
    file: Path
    case: TestCase | None  # None: the file itself could not be run
    passed: bool
    got: str  # what the broker answered, e.g. "refuse destination_not_allowed"
    detail: str = ""  # the refusal's message, or why the case could not run

    @property
    def name(self) -> str:
        return self.case.name if self.case else "(file)"


def outcome_of(verdict: Verdict) -> Expectation:
    if isinstance(verdict, Denied):
        return Expectation("refuse", code=verdict.error)
    if verdict.injected:
        return Expectation("inject", secrets=tuple(sorted(verdict.injected)))
    return Expectation("allow")


def run_file(test_file: TestFile, policy_override: Path | None = None) -> list[CaseResult]:
    policy_path = policy_override or test_file.policy
    try:
        policy = load_policy(policy_path)
    except PolicyError as error:
        first = error.issues[0] if error.issues else "invalid policy"
        return [CaseResult(test_file.path, None, False, "no policy", f"{first}")]
    with throwaway_harness(policy) as harness:
        return [_run_case(harness, policy, test_file.path, case) for case in test_file.cases]


def _run_case(harness: DecisionHarness, policy: Policy, path: Path,
              case: TestCase) -> CaseResult:
    grant = harness.grant(case.agent, case.grant, approved=case.approved)
    if isinstance(grant, Denied):
        verdict: Verdict = grant
    else:
        try:
            verdict = harness.decide(grant, _request(case, grant, policy))
        except RequestError as error:
            return CaseResult(path, case, False, "error", str(error))
    got = outcome_of(verdict)
    detail = verdict.message if isinstance(verdict, Denied) else ""
    return CaseResult(path, case, got == case.expect, str(got), detail)


def _request(case: TestCase, grant: TestGrant, policy: Policy) -> OutboundRequest:
    placeholder = ""
    if case.secret is not None:
        placeholder = grant.placeholders.get(case.secret) or _policy_placeholder(
            policy, case.secret)

    def filled(text: str) -> str:
        return text.replace(PLACEHOLDER_MARK, placeholder) if placeholder else text

    url, body = filled(case.url), filled(case.body)
    headers = {name: filled(value) for name, value in case.headers.items()}
    marked = any(PLACEHOLDER_MARK in text
                 for text in (case.url, case.body, *case.headers.values()))
    placements: tuple[Placement, ...] = ()
    if placeholder and not marked:
        placements = (Placement(placeholder, case.place, case.header,
                                case.aws_service, case.aws_region),)
    return build_request(case.method, url, headers, body, placements)


def _policy_placeholder(policy: Policy, name: str) -> str:
    """A secret the grant does not hold: the agent could still send its placeholder."""
    secret = policy.secrets.get(name)
    return secret.placeholder if secret else "{{secret:" + name + "}}"
