import pytest

from broker_proxy.decision.authority import AuthorityError, authorities_agree, split_authority

# --- split_authority ----------------------------------------------------------------------------


@pytest.mark.parametrize(("authority", "scheme", "expected"), [
    ("api.example.com", "https", ("api.example.com", 443)),
    ("api.example.com", "http", ("api.example.com", 80)),
    ("api.example.com:8443", "https", ("api.example.com", 8443)),
    ("API.Example.COM.:443", "https", ("api.example.com", 443)),
    ("127.0.0.1:8080", "http", ("127.0.0.1", 8080)),
    ("[::1]:8443", "https", ("::1", 8443)),
    ("[2001:DB8::1]", "https", ("2001:db8::1", 443)),
    ("api.example.com:65535", "https", ("api.example.com", 65535)),
    ("münchen.de", "https", ("xn--mnchen-3ya.de", 443)),
    ("api.example.com:", "https", ("api.example.com", 443)),  # RFC 3986: empty port is default
    ("[::1]:", "https", ("::1", 443)),
])
def test_split_authority_parses_host_and_port(authority, scheme, expected):
    assert split_authority(authority, scheme) == expected


@pytest.mark.parametrize("authority", [
    "",
    "   ",
    "api.example.com:0",
    "api.example.com:65536",
    "api.example.com:99999999",
    "api.example.com:-1",
    "api.example.com:+443",
    "api.example.com:44 3",
    "api.example.com:٤٤٣",  # Arabic-Indic digits: isdigit() but not a port
    "api.example.com:https",
    "[::1",
    "[::1]x",
    "[::1]:0",
    "[]:443",
    "[not-v6]:443",  # brackets only ever wrap an IPv6 literal
    "[1.2.3.4]:443",
    "::1",
    "2001:db8::1:443",  # unbracketed IPv6: is ":443" a port or part of the address?
])
def test_split_authority_rejects_bad_ports_and_hosts(authority):
    with pytest.raises(AuthorityError):
        split_authority(authority, "https")


@pytest.mark.parametrize("authority", [
    "user@api.example.com",
    "user:pass@api.example.com:443",
    "evil.example@api.example.com",
    "api.example.com/path",
    "api.example.com\\evil.example",
    "api.example.com?x",
    "api.example.com#x",
])
def test_split_authority_rejects_userinfo_and_url_parts(authority):
    with pytest.raises(AuthorityError):
        split_authority(authority, "https")


def test_split_authority_without_a_port_for_an_unknown_scheme_is_refused():
    with pytest.raises(AuthorityError):
        split_authority("api.example.com", "ftp")


# --- authorities_agree --------------------------------------------------------------------------


def agree(host_header: str | None = None, authority: str | None = None,
          sni: str | None = None, *, host: str = "api.example.com", port: int = 443,
          scheme: str = "https") -> bool:
    return authorities_agree(scheme=scheme, host=host, port=port, host_header=host_header,
                             authority=authority, sni=sni)


def test_everything_naming_the_target_agrees():
    assert agree("api.example.com", "api.example.com:443", "api.example.com")


def test_absent_names_agree():
    assert agree()


def test_host_header_for_another_host_disagrees():
    assert not agree("evil.example.com")


def test_host_header_with_another_port_disagrees():
    assert not agree("api.example.com:8443")


def test_host_header_without_port_means_the_scheme_default():
    assert agree("api.example.com", port=443)
    assert not agree("api.example.com", port=8443)
    assert agree("api.example.com", port=80, scheme="http")


def test_sni_for_another_host_disagrees():
    assert not agree("api.example.com", sni="evil.example.com")


def test_absolute_form_authority_for_another_host_disagrees():
    assert not agree("api.example.com", authority="evil.example.com")


def test_absolute_form_authority_with_another_port_disagrees():
    assert not agree(authority="api.example.com:444")


def test_case_and_trailing_dot_are_equivalent():
    assert agree("API.EXAMPLE.COM.", "Api.Example.Com.:443", "api.example.com.",
                 host="Api.Example.com.")


def test_ipv6_target_agrees_with_bracketed_host_header():
    assert agree("[::1]:8443", host="::1", port=8443)
    assert not agree("[::2]:8443", host="::1", port=8443)


def test_unparseable_host_header_disagrees():
    assert not agree("api.example.com:notaport")
    assert not agree("user@api.example.com")
    assert not agree("")


def test_unparseable_sni_disagrees():
    assert not agree(sni="bad host")


def test_unparseable_target_host_disagrees():
    assert not agree(host="bad host")
