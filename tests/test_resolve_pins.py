"""`--resolve HOST[:PORT]=IP[:PORT]`: read like curl's --connect-to, refused with one reason."""

from __future__ import annotations

import pytest

from broker_proxy.policy.resolve_pins import PinError, ResolvePins


def test_a_pin_without_ports_keeps_the_request_port() -> None:
    pins = ResolvePins.parse(["API.Example.com.=127.0.0.1"])
    assert pins.lookup("api.example.com", 443) == ("127.0.0.1", 443)
    assert pins.lookup("api.example.com", 8443) == ("127.0.0.1", 8443)
    assert pins.lookup("other.example.com", 443) is None


def test_a_pin_with_ports_maps_one_port_to_another_and_wins_over_a_portless_one() -> None:
    pins = ResolvePins.parse(["api.openai.com:443=127.0.0.1:8443",
                              "api.openai.com=10.0.0.1", "v6.example.com:443=[::1]:9443"])
    assert pins.lookup("api.openai.com", 443) == ("127.0.0.1", 8443)
    assert pins.lookup("api.openai.com", 80) == ("10.0.0.1", 80)
    assert pins.lookup("v6.example.com", 443) == ("::1", 9443)
    assert pins.lookup("v6.example.com", 80) is None


def test_a_bare_ipv6_address_is_not_read_as_a_port() -> None:
    assert ResolvePins.parse(["h.example=::1"]).lookup("h.example", 443) == ("::1", 443)


@pytest.mark.parametrize("spec", ["api.example.com", "api.example.com=example.org",
                                  "api.example.com=127.0.0.1:0", "api.example.com=127.0.0.1:99999",
                                  "api.example.com:x=127.0.0.1", "=127.0.0.1",
                                  "api.example.com=[::1]x"])
def test_a_bad_pin_names_the_spelling_and_the_value(spec: str) -> None:
    with pytest.raises(PinError) as info:
        ResolvePins.parse([spec], "--resolve")
    assert str(info.value) == f"--resolve must be HOST[:PORT]=IP[:PORT], got {spec!r}"
