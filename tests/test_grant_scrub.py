"""Scrubbing is per grant: every secret the grant holds, whatever the request injected.

And nothing the broker holds after an injection shows a secret in its repr or str.
"""

from __future__ import annotations

import base64
import gc
import types
from datetime import timedelta

from broker_proxy.addons.response_scrubbing import ScrubState

from broker_proxy.grants.model import Grant, GrantStatus
from broker_proxy.policy.loader import load_policy_text
from broker_proxy.policy.model import SecretPolicy
from broker_proxy.request.outbound import Allowed
from broker_proxy.scrubbing import scrubber as scrubber_module
from broker_proxy.scrubbing.grant_scrub import GrantScrubValues
from broker_proxy.scrubbing.scrubber import MessageScrubber, Scrubber
from broker_proxy.secrets.value import SecretValue
from broker_proxy.time_source import utc_now
from tests.decision_setup import bearer, request


def test_an_answer_is_scrubbed_for_every_secret_of_the_grant_also_without_injection(setup):
    issued = setup.issue("api_key", "spare")
    injected = setup.broker.decide(issued.token, request(headers=bearer()))
    plain = setup.broker.decide(issued.token, request(path="/v1/session"))
    for verdict in (injected, plain):
        assert isinstance(verdict, Allowed) and verdict.scrub_complete
        # The grant's two secrets, and header_only: the policy may send it to this host.
        assert verdict.scrub == {"api_key": (setup.values["api_key"], "{{secret:api_key}}"),
                                 "spare": (setup.values["spare"], "{{secret:spare}}"),
                                 "header_only": (setup.values["header_only"],
                                                 "{{secret:header_only}}")}
    assert injected.injected == ("api_key",) and plain.injected == ()


def test_a_rotated_secret_is_scrubbed_at_once_also_in_answers_that_inject_nothing(
        setup, monkeypatch):
    issued = setup.issue("api_key")
    setup.broker.decide(issued.token, request(headers=bearer()))  # the old value is cached
    rotated = setup.values["api_key"] + "-rotated"
    monkeypatch.setenv("BP_TEST_API_KEY", rotated)
    injected = setup.broker.decide(issued.token, request(headers=bearer()))
    plain = setup.broker.decide(issued.token, request(path="/v1/read"))
    assert isinstance(injected, Allowed) and isinstance(plain, Allowed)
    assert injected.scrub["api_key"][0] == rotated and plain.scrub["api_key"][0] == rotated


def test_a_grant_secret_that_cannot_be_resolved_marks_the_scrub_incomplete(setup, monkeypatch):
    issued = setup.issue("api_key", "spare")
    monkeypatch.delenv("BP_TEST_SPARE")
    verdict = setup.broker.decide(issued.token, request(headers=bearer()))
    assert isinstance(verdict, Allowed) and not verdict.scrub_complete
    assert set(verdict.scrub) == {"api_key", "header_only"}  # header_only: this host's too


SHAPED_POLICY = """\
version: 1
secrets:
  shaped:
    from: env:X
    placeholder_format: {prefix: "sk-bp-", length: 32}
    destinations: [{host: api.example.com}]
agents:
  bot: {secrets: [shaped], max_ttl: 1h}
"""


class _CountingResolver:
    def __init__(self, value: str) -> None:
        self.value = value
        self.calls = 0
        self.fail = False

    def resolve(self, secret: SecretPolicy) -> SecretValue:
        self.calls += 1
        if self.fail:
            raise RuntimeError("backend down")
        return SecretValue(secret.name, self.value)

    stored_value = resolve

    def minted_token(self, secret: SecretPolicy) -> SecretValue | None:
        return None

    def retired_values(self, secret: SecretPolicy) -> tuple[SecretValue, ...]:
        return ()


def _grant(placeholder: str) -> Grant:
    now = utc_now()
    return Grant(id="g_0000000000000001", agent="bot", task="t", secrets=("shaped",),
                 created_at=now, expires_at=now + timedelta(hours=1), max_uses=None, uses=0,
                 status=GrantStatus.ACTIVE, approved_by=None, approved_at=None,
                 revoked_at=None, token_hash=b"", placeholders=(("shaped", placeholder),))


def test_per_grant_placeholders_come_back_as_that_grants_own_and_values_are_cached():
    policy = load_policy_text(SHAPED_POLICY)
    resolver = _CountingResolver("real-" + "v" * 30)
    now = [0.0]
    values = GrantScrubValues(resolver, ttl=10, failure_ttl=2, clock=lambda: now[0])  # type: ignore[arg-type]
    first = values.for_grant(_grant("sk-bp-" + "A" * 32), policy)
    second = values.for_grant(_grant("sk-bp-" + "B" * 32), policy)
    assert first.values == {"shaped": (resolver.value, "sk-bp-" + "A" * 32)}
    assert second.values == {"shaped": (resolver.value, "sk-bp-" + "B" * 32)}
    assert resolver.calls == 1  # one resolve for both grants, within the TTL
    assert Scrubber(second.values).scrub(resolver.value.encode())[0] == b"sk-bp-" + b"B" * 32
    # Fail closed: past the TTL a value that cannot be had makes the set incomplete, and the
    # failure is remembered briefly so a broken backend is not asked by every answer.
    now[0] = 11.0
    resolver.fail = True
    assert not values.for_grant(_grant("sk-bp-" + "A" * 32), policy).complete
    assert not values.for_grant(_grant("sk-bp-" + "A" * 32), policy).complete
    assert resolver.calls == 2
    now[0] = 14.0
    resolver.fail = False
    assert values.for_grant(_grant("sk-bp-" + "A" * 32), policy).complete


def _our_objects(roots: list[object], limit: int = 200_000) -> list[object]:
    """Every object of broker-proxy's own types reachable from ``roots``."""
    seen: set[int] = set()
    found: list[object] = []
    stack = list(roots)
    while stack and len(seen) < limit:
        item = stack.pop()
        if id(item) in seen or isinstance(item, (type, types.ModuleType, types.FunctionType,
                                                 types.BuiltinFunctionType, types.FrameType)):
            continue
        seen.add(id(item))
        module = getattr(type(item), "__module__", "") or ""
        if module.startswith(("broker_proxy", "addons")):
            found.append(item)
        stack.extend(gc.get_referents(item))
        for slot in getattr(type(item), "__slots__", ()):  # slotted fields gc may not list
            if hasattr(item, slot):
                stack.append(getattr(item, slot))
    return found


def test_nothing_the_broker_holds_after_an_injection_shows_a_secret(setup):
    issued = setup.issue("api_key", "spare")
    verdict = setup.broker.decide(issued.token, request(headers=bearer()))
    assert isinstance(verdict, Allowed)
    scrubber = Scrubber(verdict.scrub)
    stream = scrubber.stream()
    stream.feed(b"x" + setup.values["api_key"].encode()[:10])
    messages = MessageScrubber(scrubber)
    messages.message(b"y" + setup.values["api_key"].encode()[:10])
    state = ScrubState(scrubber, verdict.grant_id, messages=messages)
    roots = [setup.broker, verdict, scrubber, stream, messages, state, scrubber_module._COMPILED]
    objects = _our_objects(roots)
    kinds = {type(o).__name__ for o in objects}
    assert {"Broker", "Allowed", "Scrubber", "_Matcher", "_Compiled", "_CompiledCache",
            "GrantScrubValues", "StreamScrubber", "MessageScrubber", "ScrubState"} <= kinds
    for value in setup.values.values():
        forms = [value, value.encode().hex(), base64.b64encode(value.encode()).decode()[4:-4],
                 repr(value.encode())[2:-1]]
        for item in objects:
            for text in (repr(item), str(item)):
                unescaped = text.replace("\\", "")  # a regex pattern escapes "-", "." ...
                assert not any(form in text or form in unescaped for form in forms), (
                    type(item).__name__)
