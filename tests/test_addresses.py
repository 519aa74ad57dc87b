from ipaddress import ip_network

import pytest

from broker_proxy.decision.addresses import address_allowed

NONE: tuple = ()
LOOPBACK_ALLOWED = (ip_network("127.0.0.0/8"),)


@pytest.mark.parametrize("address", [
    "127.0.0.1",
    "127.255.0.9",
    "::1",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "100.64.0.1",  # carrier-grade NAT
    "fd00::1",  # unique local
    "169.254.1.1",
    "fe80::1",
    "fe80::1%eth0",
    "169.254.169.254",  # cloud metadata service
    "fd00:ec2::254",  # AWS metadata over IPv6
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "::127.0.0.1",  # deprecated IPv4-compatible form
    "0.0.0.0",  # noqa: S104 (an address to refuse, not one we bind)
    "::",
    "224.0.0.1",
    "ff02::1",
    "255.255.255.255",
    "240.0.0.1",
    "198.18.0.1",
])
def test_non_public_addresses_are_refused(address):
    assert not address_allowed(address, NONE)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "140.82.112.3", "2606:4700::1111",
                                     "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address):
    assert address_allowed(address, NONE)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::ffff:127.0.0.1"])
def test_address_in_an_allow_listed_network_is_allowed(address):
    assert address_allowed(address, LOOPBACK_ALLOWED)


def test_allow_list_covers_only_its_own_network():
    assert not address_allowed("10.0.0.1", LOOPBACK_ALLOWED)
    assert not address_allowed("169.254.169.254", LOOPBACK_ALLOWED)
    assert not address_allowed("::1", LOOPBACK_ALLOWED)


def test_ipv6_allow_list_entry_is_honoured():
    assert address_allowed("fd00::5", (ip_network("fd00::/64"),))
    assert not address_allowed("fd01::5", (ip_network("fd00::/64"),))


@pytest.mark.parametrize("address", ["", "localhost", "example.com", "1.2.3", "999.1.1.1",
                                     "[::1]", "::1::2"])
def test_unparseable_address_is_refused(address):
    assert not address_allowed(address, LOOPBACK_ALLOWED)


def test_ipv6_loopback_can_be_allow_listed():
    assert address_allowed("::1", (ip_network("::1/128"),))
