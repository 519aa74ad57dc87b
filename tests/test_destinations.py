import random
from datetime import timedelta

import pytest

from broker_proxy.policy.destinations import (
    DestinationIndex,
    GlobError,
    HostError,
    canonical_host,
    canonical_host_pattern,
    compile_path_glob,
    host_matches,
    path_matches,
)
from broker_proxy.policy.model import (
    DEFAULT_METHODS,
    AgentPolicy,
    Destination,
    Policy,
    SecretPolicy,
)

# --- canonical_host ------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "canonical"), [
    ("api.github.com", "api.github.com"),
    ("API.GitHub.COM", "api.github.com"),
    ("api.github.com.", "api.github.com"),
    ("münchen.de", "xn--mnchen-3ya.de"),
    ("MÜNCHEN.DE", "xn--mnchen-3ya.de"),
    ("xn--mnchen-3ya.de", "xn--mnchen-3ya.de"),
    ("\uff45xample.com", "example.com"),  # fullwidth "e": nameprep folds it
    ("例え.テスト", "xn--r8jz45g.xn--zckzah"),
    ("127.0.0.1", "127.0.0.1"),
    ("127.0.0.1.", "127.0.0.1"),
    ("[::1]", "::1"),
    ("::1", "::1"),
    ("[2001:DB8:0:0:0:0:0:1]", "2001:db8::1"),
    ("_dmarc.example.com", "_dmarc.example.com"),
    ("localhost", "localhost"),
])
def test_canonical_host(raw, canonical):
    assert canonical_host(raw) == canonical


@pytest.mark.parametrize("raw", [
    "", ".", "a..b", "example.com..", ".example.com", "exa mple.com", "user@example.com",
    "example.com/path", "example.com:443", "exa\\mple.com", "exa%2ample.com", "fe80::1%eth0",
    "[1.2.3.4]", "[::1", "::1]", "a" * 64 + ".com", ".".join(["a"] * 127) + ".com",
    "*.example.com", "ex\nample.com",
    # Numeric last labels are what some clients read as IPv4 ("127.1" is 127.0.0.1).
    "127.1", "0x7f.0.0.1", "0177.0.0.1", "1.2.3.256", "example.123",
])
def test_uncanonicalisable_hosts_are_refused(raw):
    with pytest.raises(HostError):
        canonical_host(raw)


def test_host_error_is_one_line_and_quotes_the_host():
    with pytest.raises(HostError) as raised:
        canonical_host("bad\nhost")
    assert "\n" not in str(raised.value)
    assert '"bad\\nhost"' in str(raised.value)


@pytest.mark.parametrize(("raw", "canonical"), [
    ("*.Example.COM.", "*.example.com"),
    ("*.bücher.example", "*.xn--bcher-kva.example"),
    ("api.example.com", "api.example.com"),
])
def test_canonical_host_pattern(raw, canonical):
    assert canonical_host_pattern(raw) == canonical


@pytest.mark.parametrize("raw", [
    "*", "*.", "*.com", "**.example.com", "*example.com", "api.*.example.com", "a*.example.com",
    "*.*.example.com", "*.1.2.3.4", "*.[::1]",
])
def test_wildcard_must_be_the_whole_first_label_of_a_real_domain(raw):
    with pytest.raises(HostError):
        canonical_host_pattern(raw)


# --- host_matches --------------------------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "host", "expected"), [
    ("api.github.com", "api.github.com", True),
    ("api.github.com", "github.com", False),
    ("api.github.com", "xapi.github.com", False),
    ("*.example.com", "a.example.com", True),
    ("*.example.com", "a.b.example.com", True),
    ("*.example.com", "example.com", False),
    ("*.example.com", "badexample.com", False),
    ("*.example.com", "a.badexample.com", False),
    ("*.example.com", "example.com.evil.net", False),
    ("*.example.com", ".example.com", False),
])
def test_wildcards_are_label_aligned(pattern, host, expected):
    assert host_matches(pattern, host) is expected


# --- path globs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("glob", "path", "expected"), [
    ("/repos/acme/**", "/repos/acme/widgets/issues/1", True),
    ("/repos/acme/**", "/repos/acme/", True),
    ("/repos/acme/**", "/repos/acme", True),
    ("/repos/acme/**", "/repos/acme-evil/x", False),
    ("/repos/acme/**", "/repos/acmex", False),
    ("/repos/acme/**", "/repos/other/x", False),
    ("/repos/*/issues", "/repos/acme/issues", True),
    ("/repos/*/issues", "/repos/acme/sub/issues", False),
    ("/repos/*/issues", "/repos//issues", True),
    ("/repos/*/issues", "/repos/acme/issues/1", False),
    ("/v1/*.json", "/v1/models.json", True),
    ("/v1/*.json", "/v1/models.jsonx", False),
    ("/a/**/z", "/a/z", True),
    ("/a/**/z", "/a/b/c/z", True),
    ("/a/**/z", "/a/bz", False),
    ("/**", "/", True),
    ("/**", "/anything/at/all", True),
    ("/", "/", True),
    ("/", "/x", False),
    ("/user", "/user", True),
    ("/user", "/User", False),  # paths are case-sensitive
    ("/user", "/user/", False),
])
def test_path_globs(glob, path, expected):
    assert path_matches(glob, path) is expected


@pytest.mark.parametrize(("glob", "literal", "not_matching"), [
    ("/a.b", "/a.b", "/axb"),
    ("/a?b", "/a?b", "/axb"),
    ("/[ab]", "/[ab]", "/a"),
    ("/a+", "/a+", "/aa"),
    ("/(x|y)", "/(x|y)", "/x"),
    ("/^$", "/^$", "/"),
    ("/a{2}", "/a{2}", "/aa"),
    ("/\\d", "/\\d", "/1"),
])
def test_glob_specials_other_than_stars_are_literal(glob, literal, not_matching):
    assert path_matches(glob, literal)
    assert not path_matches(glob, not_matching)


def test_dot_segments_are_not_normalised_here():
    # The request layer must reject or normalise these before asking: this is why.
    assert path_matches("/repos/acme/**", "/repos/acme/../other/secret")
    assert not path_matches("/repos/other/**", "/repos/acme/../other/secret")
    assert not path_matches("/repos/acme/x", "/repos/acme/./x")


@pytest.mark.parametrize("glob", ["repos/**", "", "/a/**b", "/a**/b", "/***"])
def test_invalid_globs_are_refused(glob):
    with pytest.raises(GlobError):
        compile_path_glob(glob)


# --- DestinationIndex ----------------------------------------------------------------------------


def _destination(host, port=443, scheme="https", methods=DEFAULT_METHODS, paths=()):
    return Destination(scheme=scheme, host=host, port=port, methods=frozenset(methods),
                       paths=tuple(paths))


def _secret(name, *destinations):
    return SecretPolicy(name=name, source="vault", command=None,
                        placeholder="{{secret:" + name + "}}", destinations=destinations,
                        inject=frozenset({"header"}), env=None)


def _policy(*secrets, egress=()):
    return Policy(
        secrets={secret.name: secret for secret in secrets},
        agents={"bot": AgentPolicy("bot", frozenset(s.name for s in secrets), timedelta(hours=1),
                                   frozenset())},
        egress_allow=tuple(egress), allow_addresses=(),
    )


@pytest.fixture
def index():
    return DestinationIndex(_policy(
        _secret("github",
                _destination("api.github.com", methods={"GET", "POST"},
                             paths=["/repos/acme/**", "/user"]),
                _destination("uploads.github.com", methods={"POST"})),
        _secret("cdn", _destination("*.cdn.example.com", port=8443)),
        _secret("legacy", _destination("legacy.example.com", port=80, scheme="http")),
        egress=["pypi.org", "*.pythonhosted.org"],
    ))


def test_allowed_request(index):
    assert index.allows("github", "https", "api.github.com", 443, "GET", "/repos/acme/x/pulls")
    assert index.allows("github", "https", "api.github.com", 443, "post", "/user")


def test_method_outside_destination_is_refused(index):
    assert not index.allows("github", "https", "api.github.com", 443, "DELETE", "/user")
    assert not index.allows("github", "https", "uploads.github.com", 443, "GET", "/")


def test_never_methods_are_refused_even_if_listed():
    listed = DestinationIndex(_policy(_secret("s", _destination("h.example", methods={"TRACE"}))))
    assert not listed.allows("s", "https", "h.example", 443, "TRACE", "/")
    assert not listed.allows("s", "https", "h.example", 443, "trace", "/")


def test_path_outside_destination_is_refused(index):
    assert not index.allows("github", "https", "api.github.com", 443, "GET", "/repos/evil/x")
    assert not index.allows("github", "https", "api.github.com", 443, "GET", "/user/keys")


def test_scheme_port_and_secret_must_all_match(index):
    assert not index.allows("github", "http", "api.github.com", 443, "GET", "/user")
    assert not index.allows("github", "https", "api.github.com", 8443, "GET", "/user")
    assert not index.allows("cdn", "https", "api.github.com", 443, "GET", "/user")
    assert index.allows("legacy", "http", "legacy.example.com", 80, "GET", "/")
    assert not index.allows("legacy", "https", "legacy.example.com", 443, "GET", "/")


def test_wildcard_destination_covers_subdomains_only(index):
    assert index.allows("cdn", "https", "a.cdn.example.com", 8443, "GET", "/")
    assert index.allows("cdn", "https", "a.b.cdn.example.com", 8443, "GET", "/")
    assert not index.allows("cdn", "https", "cdn.example.com", 8443, "GET", "/")
    assert not index.allows("cdn", "https", "evilcdn.example.com", 8443, "GET", "/")


def test_uncanonical_hosts_match_nothing(index):
    assert not index.allows("github", "https", "API.github.com", 443, "GET", "/user")
    assert index.destinations_for("github", "https", "api.github.com.", 443) == ()


def test_destinations_for_returns_the_matching_rules(index):
    found = index.destinations_for("github", "https", "api.github.com", 443)
    assert [d.host for d in found] == ["api.github.com"]
    assert index.destinations_for("nobody", "https", "api.github.com", 443) == ()


def test_secrets_covering(index):
    assert index.secrets_covering("https", "api.github.com", 443) == {"github"}
    assert index.secrets_covering("https", "x.cdn.example.com", 8443) == {"cdn"}
    assert index.secrets_covering("https", "x.cdn.example.com", 443) == frozenset()
    assert index.secrets_covering("http", "legacy.example.com", 80) == {"legacy"}


def test_egress_allow_list_any_port_and_scheme(index):
    assert index.egress_allows("pypi.org")
    assert index.egress_allows("files.pythonhosted.org")
    assert not index.egress_allows("pythonhosted.org")
    assert not index.egress_allows("evilpypi.org")
    assert not index.egress_allows("api.github.com")


# --- index == brute force, on a randomized policy ---------------------------------------------

_DOMAINS = ["example.com", "example.net", "api.example.com", "corp.internal.test", "a.b.c.test"]
_LABELS = ["api", "www", "a", "b", "x1", "deep"]
_PORTS = [443, 8443, 80]
_METHODS = sorted(DEFAULT_METHODS | {"TRACE", "PROPFIND"})
_PATHS = ["/", "/v1/models", "/v1/a/b", "/repos/acme/x", "/user", "/v2/x.json"]
_GLOBS = ["/v1/**", "/repos/*/x", "/user", "/**", "/v2/*.json"]


def _random_host(rng):
    host = rng.choice(_DOMAINS)
    for _ in range(rng.randint(0, 2)):
        host = f"{rng.choice(_LABELS)}.{host}"
    return host


def _random_policy(rng, count=200):
    secrets = []
    for number in range(count):
        destinations = []
        for _ in range(rng.randint(1, 4)):
            host = _random_host(rng)
            if rng.random() < 0.35:
                host = "*." + host
            destinations.append(_destination(
                host, port=rng.choice(_PORTS), scheme=rng.choice(["https", "https", "http"]),
                methods=set(rng.sample(sorted(DEFAULT_METHODS), rng.randint(1, 4))),
                paths=rng.sample(_GLOBS, rng.randint(0, 2)),
            ))
        secrets.append(_secret(f"s{number}", *destinations))
    egress = [("*." if rng.random() < 0.5 else "") + _random_host(rng) for _ in range(10)]
    return _policy(*secrets, egress=egress)


def test_index_answers_exactly_like_a_scan_of_every_rule():
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    policy = _random_policy(rng)
    index = DestinationIndex(policy)
    checked_hits = 0
    for _ in range(3000):
        name = f"s{rng.randrange(len(policy.secrets) + 5)}"  # a few names no secret has
        scheme, host, port = rng.choice(["https", "http"]), _random_host(rng), rng.choice(_PORTS)
        if name in policy.secrets and rng.random() < 0.5:
            # Aim at one of the secret's own rules half the time, so hits are not rare.
            aimed = rng.choice(policy.secrets[name].destinations)
            scheme, port = aimed.scheme, aimed.port
            host = aimed.host.replace("*", rng.choice(_LABELS))
        method, path = rng.choice(_METHODS), rng.choice(_PATHS)
        secret = policy.secrets.get(name)
        expected = [
            d for d in (secret.destinations if secret else ())
            if d.scheme == scheme and d.port == port and host_matches(d.host, host)
        ]
        context = f"seed={seed} {name} {scheme}://{host}:{port} {method} {path}"
        assert sorted(index.destinations_for(name, scheme, host, port), key=repr) == \
            sorted(expected, key=repr), context
        expected_allow = method not in {"TRACE", "TRACK", "CONNECT"} and any(
            method in d.methods and (not d.paths or any(path_matches(g, path) for g in d.paths))
            for d in expected
        )
        assert index.allows(name, scheme, host, port, method, path) is expected_allow, context
        covering = {
            s.name for s in policy.secrets.values()
            if any(d.scheme == scheme and d.port == port and host_matches(d.host, host)
                   for d in s.destinations)
        }
        assert index.secrets_covering(scheme, host, port) == covering, context
        assert index.egress_allows(host) is any(
            host_matches(p, host) for p in policy.egress_allow), context
        checked_hits += bool(expected)
    assert checked_hits > 500, f"seed={seed}: the random policy hardly ever matched"


def test_the_plain_pattern_shortcut_agrees_with_the_full_reachability_check() -> None:
    import random

    from broker_proxy.policy import path_reach

    rng = random.Random(7)
    alphabet = ["a", "Z", "0", ".", "..", "-", "_", "~", "*", "**", "/", "%41", "%2F", ";",
                " ", "é", "\\", "//", "x.y"]
    full = path_reach._PLAIN
    for _ in range(5000):
        glob = "/" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        shortcut = path_reach.unreachable_reason(glob)
        path_reach._PLAIN = path_reach.re.compile(r"(?!)")  # never matches: the full check
        try:
            assert path_reach.unreachable_reason(glob) == shortcut, glob
        finally:
            path_reach._PLAIN = full
