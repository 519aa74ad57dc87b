"""The scrubber's literal prefilter: ids name the caller's literals, with or without Hyperscan."""

from __future__ import annotations

import secrets

import pytest

from broker_proxy.scrubbing import literal_search
from broker_proxy.scrubbing.literal_search import Literal, LiteralSearch
from broker_proxy.scrubbing.scrubber import scrubber_for


@pytest.mark.parametrize("use_hyperscan", [True, False])
def test_a_search_over_part_of_a_set_reports_the_sets_indexes(use_hyperscan: bool) -> None:
    literals = [Literal(b"alpha"), Literal(b"be\nta"), Literal(b"GAMMA", caseless=True)]
    part = LiteralSearch([literals[0], literals[2]], ids=[0, 2], use_hyperscan=use_hyperscan)
    assert sorted(part.find(b"xx alpha be\nta gamma")) == [(0, 8), (2, 20)]
    with pytest.raises(ValueError):
        LiteralSearch(literals, ids=[0, 1])


def test_data_without_a_line_break_is_searched_without_the_wrapped_literals() -> None:
    """Same hits from the smaller set: a literal holding a line break cannot be in such data."""
    value = "wrap-" + secrets.token_urlsafe(30)
    scrubber = scrubber_for({"k": (value, "PH_k")})
    plan = scrubber._plan
    assert plan is not None and plan.literals_on_one_line is not plan.literals
    one_line = b"head " + value.encode() + b" tail"
    assert plan.literals.find(one_line) == plan.literals_on_one_line.find(one_line)
    out, counts = scrubber.scrub(one_line)
    assert value.encode() not in out and counts == {"k": 1}


def test_the_fallback_search_gives_the_same_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(literal_search, "hyperscan", None)
    search = LiteralSearch([Literal(b"abc"), Literal(b"bcd")], ids=[7, 3])
    assert sorted(search.find(b"abcd")) == [(3, 4), (7, 3)]
