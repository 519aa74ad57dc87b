from datetime import timedelta

import pytest

from broker_proxy.durations import MAX_DURATION, DurationError, format_duration, parse_duration


@pytest.mark.parametrize(("text", "expected"), [
    ("30s", timedelta(seconds=30)),
    ("15m", timedelta(minutes=15)),
    ("1h", timedelta(hours=1)),
    ("2h30m", timedelta(hours=2, minutes=30)),
    ("1d", timedelta(days=1)),
    ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
    ("90m", timedelta(minutes=90)),
    ("30d", MAX_DURATION),
])
def test_units_and_combinations_parse(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", [
    "abc", "", "15", "m", "1.5h", "-5m", "15M", "1w", "1h 30m", " 1h", "30m2h", "1h1h", "\uff11h",
])
def test_malformed_duration_names_the_text_and_the_fix(text):
    with pytest.raises(DurationError) as raised:
        parse_duration(text)
    assert "use a number with s, m, h or d, e.g. 15m" in str(raised.value)


def test_error_message_is_exact():
    with pytest.raises(DurationError, match=r'^invalid duration "abc": use a number with s, m, '
                                            r"h or d, e\.g\. 15m$"):
        parse_duration("abc")


def test_zero_is_refused():
    with pytest.raises(DurationError, match=r'^invalid duration "0m": must be longer than zero$'):
        parse_duration("0m")


def test_more_than_thirty_days_is_refused():
    with pytest.raises(DurationError, match=r'^invalid duration "31d": must be at most 30d$'):
        parse_duration("31d")
    with pytest.raises(DurationError):
        parse_duration("721h")


def test_huge_numbers_are_refused_without_overflow():
    with pytest.raises(DurationError):
        parse_duration("9" * 400 + "d")


def test_duration_error_is_a_value_error():
    assert issubclass(DurationError, ValueError)


def test_control_characters_stay_escaped_in_the_message():
    with pytest.raises(DurationError) as raised:
        parse_duration("1h\nX")
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(("duration", "text"), [
    (timedelta(0), "0s"),
    (timedelta(seconds=45), "45s"),
    (timedelta(minutes=90), "1h30m"),
    (timedelta(days=1, seconds=1), "1d1s"),
    (timedelta(seconds=59, microseconds=999_999), "59s"),
])
def test_format_is_compact(duration, text):
    assert format_duration(duration) == text


@pytest.mark.parametrize("text", ["30s", "15m", "1h", "2h30m", "1d", "1d2h3m4s", "30d"])
def test_format_round_trips(text):
    assert format_duration(parse_duration(text)) == text


def test_negative_durations_cannot_be_formatted():
    with pytest.raises(DurationError):
        format_duration(timedelta(seconds=-1))
