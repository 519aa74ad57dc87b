"""LLM token and cost budgets per grant through the real proxy, with the real SDKs.

The stand-in (llm_upstream.py) answers in each API's documented shapes, JSON and streamed, plain
and gzip, and reports 11 input and 7 output tokens. The proxy admits each request with a
reservation, settles it from the usage it reads, writes model, tokens and cost into the audit
record, counts them in broker_llm_tokens_total, and refuses a request the budget cannot cover
with 429 budget_exhausted, which the SDKs raise as RateLimitError.
"""

from __future__ import annotations

import json
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker_proxy.decision.llm_usage import UsageMeter
from broker_proxy.devtools import prefork
from tests.llm_stack import GEMINI, PLACEHOLDERS, LlmStack, llm_policy, llm_stack_fixture
from tests.llm_upstream import USAGE

pytestmark = pytest.mark.e2e

OUTPUT_CAP = 100
POLICY = llm_policy(head="""\
prices:
  as_of: "2026-12-01"
  models:
    gpt-4o-mini: {{input: 0.15, output: 0.60}}
    "claude-haiku-*": {{input: 1.00, output: 5.00}}
    gemini-2.0-flash: {{input: 0.10, output: 0.40}}
""", openai="budget: {{output_tokens: 100, cost_usd: 5, default_max_tokens: 50}}\n",
    anthropic="budget: {{output_tokens: 100}}\n",
    gemini="budget: {{output_tokens: 100, cost_usd: 1, default_max_tokens: 40}}\n")
HI = [{"role": "user", "content": "hi"}]


llm = llm_stack_fixture("budgets", POLICY, check_leaks=True)


@pytest.fixture(autouse=True)
def _clear(llm: LlmStack) -> None:
    llm.upstream.clear()


def _show(llm: LlmStack, grant_id: str) -> dict:
    done = prefork.run([sys.executable, "-m", "broker_proxy.cli", "--home",
                           str(llm.home.root), "grant", "show", grant_id, "--policy",
                           str(llm.policy_file), "--json"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _responses(llm: LlmStack, grant_id: str) -> list[dict]:
    records = [json.loads(line) for line in llm.home.audit_log.read_text().splitlines()]
    return [r for r in records if r["event"] == "response" and r["grant"] == grant_id]


GZIP = {"X-Test-Gzip": "1"}


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("streamed", [False, True], ids=["json", "sse"])
def test_openai_chat_usage_is_read_and_charged(llm: LlmStack, streamed: bool,
                                               gzipped: bool) -> None:
    issued = llm.issue("openai")
    client = llm.openai(issued.token)
    headers = GZIP if gzipped else {}
    if streamed:
        chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=HI,
                                                     max_tokens=40, stream=True,
                                                     extra_headers=headers))
        assert chunks[-1].usage is not None  # the proxy asked for it
        sent = json.loads(llm.upstream.requests[0].body)
        assert sent["stream_options"] == {"include_usage": True}
    else:
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=HI,
                                                max_tokens=40, extra_headers=headers)
        assert answer.usage is not None and answer.usage.completion_tokens == USAGE[1]
    [record] = _responses(llm, issued.grant.id)
    assert (record["model"], record["input_tokens"], record["output_tokens"]) == (
        "gpt-4o-mini", *USAGE)
    assert record["usage"] == "reported"
    assert record["cost_usd"] == pytest.approx((11 * 0.15 + 7 * 0.60) / 1e6, abs=1e-6)
    budget = _show(llm, issued.grant.id)["budget"]["openai"]
    assert budget["output_tokens"] == {"used": 7, "in_flight": 0, "left": OUTPUT_CAP - 7}


@pytest.mark.parametrize("streamed", [False, True], ids=["json", "sse"])
def test_openai_responses_usage_is_read(llm: LlmStack, streamed: bool) -> None:
    issued = llm.issue("openai")
    client = llm.openai(issued.token)
    if streamed:
        events = list(client.responses.create(model="gpt-4o-mini", input="hi",
                                              max_output_tokens=30, stream=True))
        assert events[-1].type == "response.completed"
    else:
        assert client.responses.create(model="gpt-4o-mini", input="hi",
                                       max_output_tokens=30).output_text == "ok"
    [record] = _responses(llm, issued.grant.id)
    assert (record["input_tokens"], record["output_tokens"]) == USAGE


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("streamed", [False, True], ids=["json", "sse"])
def test_anthropic_messages_usage_is_read(llm: LlmStack, streamed: bool,
                                          gzipped: bool) -> None:
    issued = llm.issue("anthropic")
    client = llm.anthropic(issued.token)
    headers = GZIP if gzipped else {}
    if streamed:
        with client.messages.stream(model="claude-haiku-4-5", max_tokens=30, messages=HI,
                                    extra_headers=headers) as stream:
            assert stream.get_final_message().usage.output_tokens == USAGE[1]
    else:
        answer = client.messages.create(model="claude-haiku-4-5", max_tokens=30, messages=HI,
                                        extra_headers=headers)
        assert answer.usage.output_tokens == USAGE[1]
    [record] = _responses(llm, issued.grant.id)
    assert (record["model"], record["input_tokens"], record["output_tokens"]) == (
        "claude-haiku-4-5", *USAGE)


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("method", ["generateContent", "streamGenerateContent"])
def test_gemini_usage_metadata_is_read(llm: LlmStack, method: str, gzipped: bool) -> None:
    issued = llm.issue("gemini")
    with llm.http(issued.token) as client:
        answer = client.post(f"{GEMINI}/v1beta/models/gemini-2.0-flash:{method}?alt=sse"
                             if method.startswith("stream") else
                             f"{GEMINI}/v1beta/models/gemini-2.0-flash:{method}",
                             headers={"x-goog-api-key": PLACEHOLDERS["gemini"],
                                      **(GZIP if gzipped else {})},
                             json={"contents": [{"parts": [{"text": "hi"}]}]})
    assert answer.status_code == 200, answer.text
    sent = json.loads(llm.upstream.requests[0].body)
    assert sent["generationConfig"]["maxOutputTokens"] == 40  # the policy's default, written
    [record] = _responses(llm, issued.grant.id)
    assert (record["input_tokens"], record["output_tokens"]) == USAGE


def test_the_budget_refuses_what_it_cannot_cover_and_the_sdk_sees_a_rate_limit(
        llm: LlmStack) -> None:
    import openai
    issued = llm.issue("openai")
    client = llm.openai(issued.token)
    client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=90)
    # 7 used + 95 reserved > 100: refused before anything leaves.
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=95)
    body = raised.value.response.json()
    assert body["error"] == "budget_exhausted" and "output tokens" in body["message"]
    assert raised.value.response.headers.get("retry-after") is None  # waiting will not help
    assert len(llm.upstream.requests) == 1
    # What still fits is admitted.
    client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=80)
    assert _show(llm, issued.grant.id)["budget"]["openai"]["output_tokens"]["used"] == 14


def test_anthropic_sdk_sees_budget_exhausted_as_rate_limit(llm: LlmStack) -> None:
    import anthropic
    client = llm.anthropic(llm.issue("anthropic").token)
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(model="claude-haiku-4-5", max_tokens=OUTPUT_CAP + 1,
                               messages=HI)
    assert llm.upstream.requests == []


def test_an_answer_without_usage_is_charged_its_whole_reservation(llm: LlmStack) -> None:
    issued = llm.issue("openai")
    client = llm.openai(issued.token)
    client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=30,
                                   extra_headers={"X-Test-No-Usage": "1"})
    [record] = _responses(llm, issued.grant.id)
    assert record["usage"] == "unreadable" and record["output_tokens"] == 30
    assert record["input_tokens"] == len(llm.upstream.requests[0].body)


def test_the_policy_default_cap_is_written_into_the_request(llm: LlmStack) -> None:
    issued = llm.issue("openai")
    llm.openai(issued.token).chat.completions.create(model="gpt-4o-mini", messages=HI)
    sent = json.loads(llm.upstream.requests[0].body)
    assert sent["max_completion_tokens"] == 50


def test_a_model_without_a_price_is_refused_under_a_cost_budget(llm: LlmStack) -> None:
    import openai
    client = llm.openai(llm.issue("openai").token)
    with pytest.raises(openai.PermissionDeniedError) as raised:
        client.chat.completions.create(model="gpt-5-pro", messages=HI, max_tokens=5)
    assert raised.value.response.json()["error"] == "model_not_priced"


def test_a_request_that_names_no_model_needs_no_price(llm: LlmStack) -> None:
    issued = llm.issue("openai")
    with llm.http(issued.token) as client:
        answer = client.get("https://api.openai.com/v1/models",
                            headers={"Authorization": f"Bearer {PLACEHOLDERS['openai']}"})
    assert answer.status_code == 200


def test_tokens_are_counted_with_bounded_labels(llm: LlmStack) -> None:
    issued = llm.issue("openai")
    client = llm.openai(issued.token)
    client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=5)
    text = urllib.request.urlopen(llm.proxy.metrics_url, timeout=10).read().decode()
    labels = {tuple(sorted(s.labels.items())) for f in text_string_to_metric_families(text)
              for s in f.samples if s.name == "broker_llm_tokens_total"}
    models = {dict(label)["model"] for label in labels}
    assert "gpt-4o-mini" in models and models <= {"gpt-4o-mini", "claude-haiku-*",
                                                  "gemini-2.0-flash", "other"}
    done = prefork.run([sys.executable, "-m", "broker_proxy.cli", "--home",
                           str(llm.home.root), "audit", "verify"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


LARGE = {"X-Test-Large": "1"}


def test_usage_is_read_from_an_answer_the_proxy_streams(llm: LlmStack) -> None:
    """Over 1 MiB, the answer is scrubbed and metered as it streams, not buffered."""
    issued = llm.issue("openai", "anthropic")
    chunks = list(llm.openai(issued.token).chat.completions.create(
        model="gpt-4o-mini", messages=HI, max_tokens=40, stream=True, extra_headers=LARGE))
    assert chunks[-1].usage is not None
    with llm.anthropic(issued.token).messages.stream(
            model="claude-haiku-4-5", max_tokens=30, messages=HI,
            extra_headers=LARGE) as stream:
        assert stream.get_final_message().usage.output_tokens == USAGE[1]
    records = _responses(llm, issued.grant.id)
    assert [(r["input_tokens"], r["output_tokens"], r["usage"]) for r in records] == [
        (*USAGE, "reported"), (*USAGE, "reported")]


# -- the meter alone ---------------------------------------------------------------------------


def test_the_meter_reads_events_split_anywhere() -> None:
    stream = (b'event: message_start\ndata: {"type":"message_start","message":{"usage":'
              b'{"input_tokens":5,"output_tokens":1}}}\n\nevent: message_delta\ndata: '
              b'{"type":"message_delta","usage":{"output_tokens":9}}\n\n')
    for cut in range(1, len(stream)):
        meter = UsageMeter("text/event-stream")
        meter.feed(stream[:cut])
        meter.feed(stream[cut:])
        assert meter.finish() == (5, 9)
    assert UsageMeter("application/json").finish() is None


def test_budget_and_prices_errors_point_at_their_line_and_column() -> None:
    from broker_proxy.policy.loader import PolicyError, load_policy_text

    text = POLICY.format(**PLACEHOLDERS)
    cases = [
        (text.replace("budget: {output_tokens: 100}", "budget: {}"),
         "secrets.anthropic.budget: name at least one of input_tokens, output_tokens, cost_usd"),
        (text.replace("cost_usd: 5,", "cost_usd: lots,"),
         "secrets.openai.budget.cost_usd: expected a number such as 5 or 0.15"),
        (text.replace('as_of: "2026-12-01"', 'as_of: "Dec 1"'),
         "p.yaml:3:10: prices.as_of: write the date as YYYY-MM-DD"),
        (text.replace("gpt-4o-mini: {input: 0.15, output: 0.60}", "gpt-4o-mini: {input: 0.15}"),
         'prices.models.gpt-4o-mini: missing required field "output"'),
    ]
    for wrong, message in cases:
        with pytest.raises(PolicyError) as raised:
            load_policy_text(wrong, "p.yaml")
        assert message in str(raised.value), str(raised.value)
    without_prices = text[text.index("secrets:"):]
    with pytest.raises(PolicyError, match='a cost budget needs a "prices" table'):
        load_policy_text("version: 1\n" + without_prices, "p.yaml")


def test_a_grant_may_ask_for_a_smaller_cost_budget_never_a_larger_one(llm: LlmStack) -> None:
    import openai

    from broker_proxy.grants.issuer import GrantPolicyError

    issued = llm.issue("openai", cost_usd=["openai=0.00001"])  # 10 micro-dollars
    with pytest.raises(openai.RateLimitError) as raised:
        llm.openai(issued.token).chat.completions.create(model="gpt-4o-mini", messages=HI,
                                                          max_tokens=40)
    assert "cost budget" in raised.value.response.json()["message"]
    assert _show(llm, issued.grant.id)["budget"]["openai"]["cost_usd"]["left"] == 1e-05
    with pytest.raises(GrantPolicyError, match="more than the policy allows"):
        llm.issue("openai", cost_usd=["6"])
    with pytest.raises(GrantPolicyError, match="has no concurrency in the policy"):
        llm.issue("openai", concurrency=["openai=2"])
