import secrets

import pytest

from broker_proxy.decision.placeholders import (
    PlaceholderHit,
    PlaceholderScanner,
    default_placeholder,
    names_in,
)


def scanner_for(**custom: str) -> PlaceholderScanner:
    """A scanner with a default-placeholder secret "github" plus the given custom ones."""
    return PlaceholderScanner({"github": default_placeholder("github"), **custom})


def test_generic_placeholder_is_found_with_its_position():
    text = "Bearer {{secret:github}}"
    hits = scanner_for().find(text)
    assert hits == [PlaceholderHit(7, len(text), "github")]
    assert text[hits[0].start:hits[0].end] == "{{secret:github}}"


def test_custom_placeholder_is_found_and_named_by_its_secret():
    scanner = scanner_for(openai="sk-PLACEHOLDER-openai")
    hits = scanner.find("Authorization: Bearer sk-PLACEHOLDER-openai")
    assert [hit.secret for hit in hits] == ["openai"]


def test_every_placeholder_in_one_text_is_reported_in_order():
    scanner = scanner_for(openai="sk-PLACEHOLDER-openai")
    hits = scanner.find("a={{secret:github}}&b=sk-PLACEHOLDER-openai&c={{secret:github}}")
    assert [hit.secret for hit in hits] == ["github", "openai", "github"]


def test_generic_placeholder_of_a_name_not_in_the_policy_is_reported_by_name():
    # The broker must refuse it like an ungranted secret, so it has to be seen at all.
    hits = scanner_for().find("x {{secret:no_such_secret}} y")
    assert [hit.secret for hit in hits] == ["no_such_secret"]


@pytest.mark.parametrize("text", [
    "{{secret:",
    "{{secret:github",
    "{{secret:github}",
    "{{secret:}}",
    "{{secret:git hub}}",
    "{{secret:" + "a" * 65 + "}}",
    "{{secret:github\n}}",
])
def test_malformed_placeholder_is_reported_without_a_name(text):
    hits = scanner_for().find(text)
    assert hits, "a half-written placeholder must not pass unseen"
    assert None in names_in(hits)


def test_text_without_placeholder_has_no_hits():
    scanner = scanner_for(openai="sk-PLACEHOLDER-openai")
    assert scanner.find("Bearer sk-real-looking {{not a secret}} {secret:github}") == []


def test_might_contain_is_false_for_plain_text_and_true_for_each_marker():
    scanner = scanner_for(openai="sk-PLACEHOLDER-openai")
    assert not scanner.might_contain("GET /v1/models HTTP/1.1")
    assert scanner.might_contain("x {{secret:anything")
    assert scanner.might_contain("key=sk-PLACEHOLDER-openai")


def test_might_contain_false_means_find_is_empty():
    scanner = scanner_for(openai="sk-PLACEHOLDER-openai")
    for text in ("", "plain", "{{secret", "sk-PLACEHOLDER-opena", "{secret:github}}"):
        assert not scanner.might_contain(text)
        assert scanner.find(text) == []


def test_substitution_replaces_generic_and_custom_placeholders():
    github, openai = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    scanner = scanner_for(openai="sk-PLACEHOLDER-openai")
    values = {"github": github, "openai": openai}
    out = scanner.substitute("a {{secret:github}} b sk-PLACEHOLDER-openai c", values.__getitem__)
    assert out == f"a {github} b {openai} c"


def test_substitution_is_single_pass_so_a_value_holding_a_placeholder_is_not_expanded():
    other = secrets.token_urlsafe(24)
    value_with_placeholder = secrets.token_urlsafe(8) + "{{secret:other}}"
    scanner = PlaceholderScanner({"github": default_placeholder("github"),
                                  "other": default_placeholder("other")})
    values = {"github": value_with_placeholder, "other": other}
    out = scanner.substitute("X {{secret:github}} X", values.__getitem__)
    assert out == f"X {value_with_placeholder} X"
    assert other not in out


def test_substitution_refuses_an_unchecked_malformed_placeholder():
    with pytest.raises(ValueError, match="unchecked malformed placeholder"):
        scanner_for().substitute("{{secret:github", lambda name: "never")


def test_longest_custom_placeholder_wins_when_one_is_a_prefix_of_another():
    # The policy loader forbids overlapping placeholders; the scanner must still not let the
    # shorter one split the longer one if two ever reach it.
    scanner = PlaceholderScanner({"short": "PH-KEY", "long": "PH-KEY-LONG"})
    assert [hit.secret for hit in scanner.find("x PH-KEY-LONG y")] == ["long"]
    assert [hit.secret for hit in scanner.find("x PH-KEY y")] == ["short"]
    values = {"short": "S", "long": "L"}
    assert scanner.substitute("PH-KEY-LONG PH-KEY", values.__getitem__) == "L S"


def test_custom_placeholder_with_regex_characters_is_matched_literally():
    scanner = PlaceholderScanner({"odd": "ph.(x)+[y]"})
    assert [hit.secret for hit in scanner.find("a ph.(x)+[y] b")] == ["odd"]
    assert scanner.find("a phZ(x)+[y] b") == []
    assert scanner.find("a ph.xxx[y] b") == []


def test_default_placeholder_of_a_policy_secret_is_not_treated_as_custom():
    scanner = PlaceholderScanner({"github": "{{secret:github}}"})
    assert [hit.secret for hit in scanner.find("{{secret:github}}")] == ["github"]
