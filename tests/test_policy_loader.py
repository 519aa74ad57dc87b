import hashlib
import ipaddress
import os
import secrets
import textwrap
from datetime import timedelta

import pytest

from broker_proxy.policy.loader import PolicyError, PolicyIssue, load_policy, load_policy_text
from broker_proxy.policy.model import DEFAULT_METHODS, Destination


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(text: str, name: str = "policy.yaml") -> str:
    with open(name, "w", encoding="utf-8") as policy_file:
        policy_file.write(textwrap.dedent(text).lstrip("\n"))
    return name


def problems(text: str) -> list[str]:
    """Every issue of the policy ``text``, as `policy check` would print them."""
    with pytest.raises(PolicyError) as raised:
        load_policy(write(text))
    return [str(issue) for issue in raised.value.issues]


def one_problem(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


GOOD = """
version: 1
secrets:
  github:
    from: vault
    placeholder: "ghp_PLACEHOLDER_0000000000"
    destinations:
      - host: API.GitHub.com.
        methods: [get, Post]
        paths: ["/repos/acme/**", "/user"]
      - host: "*.githubusercontent.com"
        port: 8443
      - host: legacy.example.com
        scheme: http
    inject: [header, query]
    env: GITHUB_TOKEN
  openai:
    from: env:OPENAI_API_KEY
    destinations:
      - host: api.openai.com
  tool:
    from: command
    command: [pass, show, tool]
    destinations:
      - host: "[::1]"
        port: 9000
agents:
  research-bot:
    secrets: [github, openai]
    max_ttl: 2h30m
    approval: [github]
  idle:
    secrets: []
egress:
  allow: [PyPI.org, "*.pythonhosted.org"]
network:
  allow_addresses: [127.0.0.1/8, "::1"]
"""


# --- a good policy becomes the model, defaults filled in ------------------------------------------


def test_good_policy_loads_with_canonical_values_and_defaults(in_tmp):
    path = write(GOOD)
    policy = load_policy(path)
    github = policy.secrets["github"]
    assert github.source == "vault"
    assert github.placeholder == "ghp_PLACEHOLDER_0000000000"
    assert github.destinations == (
        Destination("https", "api.github.com", 443, frozenset({"GET", "POST"}),
                    ("/repos/acme/**", "/user")),
        Destination("https", "*.githubusercontent.com", 8443, DEFAULT_METHODS, ()),
        Destination("http", "legacy.example.com", 80, DEFAULT_METHODS, ()),
    )
    assert github.inject == {"header", "query"}
    assert github.env == "GITHUB_TOKEN"
    assert github.command is None
    openai = policy.secrets["openai"]
    assert openai.placeholder == "{{secret:openai}}"
    assert openai.inject == {"header"}
    assert openai.env is None
    assert policy.secrets["tool"].command == ("pass", "show", "tool")
    assert policy.secrets["tool"].destinations[0].host == "::1"
    bot = policy.agents["research-bot"]
    assert bot.secrets == {"github", "openai"}
    assert bot.max_ttl == timedelta(hours=2, minutes=30)
    assert bot.approval == {"github"}
    assert policy.agents["idle"].max_ttl == timedelta(hours=1)
    assert policy.egress_allow == ("pypi.org", "*.pythonhosted.org")
    assert policy.allow_addresses == (ipaddress.ip_network("127.0.0.0/8"),
                                      ipaddress.ip_network("::1/128"))


def test_digest_is_sha256_of_the_file_bytes_and_source_is_the_path(in_tmp):
    path = write(GOOD)
    policy = load_policy(path)
    with open(path, "rb") as policy_file:
        assert policy.digest == hashlib.sha256(policy_file.read()).hexdigest()
    assert policy.source == "policy.yaml"


def test_text_loader_matches_file_loader(in_tmp):
    text = textwrap.dedent(GOOD).lstrip("\n")
    assert load_policy_text(text, "policy.yaml") == load_policy(write(GOOD))
    assert load_policy_text(text).digest == hashlib.sha256(text.encode()).hexdigest()


def test_version_alone_is_a_valid_empty_policy(in_tmp):
    policy = load_policy(write("version: 1\n"))
    assert (policy.secrets, policy.agents, policy.egress_allow, policy.allow_addresses) == \
        ({}, {}, (), ())


def test_empty_sections_mean_none(in_tmp):
    policy = load_policy(write("version: 1\nsecrets:\nagents:\negress:\nnetwork:\n"))
    assert policy.secrets == {} and policy.agents == {}


# --- the exact shape of a problem -----------------------------------------------------------------


def test_issue_string_is_file_line_column_path_message():
    issue = PolicyIssue("p.yaml", 3, 7, "secrets.github.from", "boom")
    assert str(issue) == "p.yaml:3:7: secrets.github.from: boom"


def test_policy_error_string_is_every_issue_on_its_own_line(in_tmp):
    with pytest.raises(PolicyError) as raised:
        load_policy(write("version: 1\nfoo: 1\nbar: 2\n"))
    assert str(raised.value) == (
        'policy.yaml:2:1: foo: unknown field "foo"\n'
        'policy.yaml:3:1: bar: unknown field "bar"'
    )


def test_every_problem_is_reported_at_once_in_file_order(in_tmp):
    found = problems("""
        version: 1
        secrets:
          github:
            from: vualt
            destinations:
              - host: api.github.com
                port: 0
                methods: [TRACE]
        agents:
          bot:
            secrets: [github, gitlab]
            max_ttl: forever
        egress:
          allow: ["bad host"]
    """)
    assert found == [
        "policy.yaml:4:11: secrets.github.from: not a secret source: use vault, env:VAR, "
        "file:PATH, keyring:SERVICE/USER or command",
        "policy.yaml:7:15: secrets.github.destinations[0].port: must be between 1 and 65535",
        "policy.yaml:8:19: secrets.github.destinations[0].methods[0]: TRACE is never allowed: "
        "it could echo the injected secret back or tunnel it",
        'policy.yaml:11:23: agents.bot.secrets[1]: undefined secret "gitlab"',
        'policy.yaml:12:14: agents.bot.max_ttl: invalid duration "forever": use a number with '
        "s, m, h or d, e.g. 15m",
        'policy.yaml:14:11: egress.allow[0]: invalid host "bad host": each dot-separated label '
        'must be 1 to 63 letters, digits, "-" or "_"',
    ]


# --- the file itself ------------------------------------------------------------------------------


def test_missing_file(in_tmp):
    with pytest.raises(PolicyError) as raised:
        load_policy("nope.yaml")
    assert str(raised.value) == "nope.yaml:0:0: policy: cannot read file: No such file or directory"


def test_directory(in_tmp):
    os.mkdir("adir")
    with pytest.raises(PolicyError) as raised:
        load_policy("adir")
    assert str(raised.value) == "adir:0:0: policy: cannot read file: Is a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(in_tmp):
    path = write("version: 1\n")
    os.chmod(path, 0)
    with pytest.raises(PolicyError) as raised:
        load_policy(path)
    assert str(raised.value) == "policy.yaml:0:0: policy: cannot read file: Permission denied"


def test_not_utf8(in_tmp):
    with open("policy.yaml", "wb") as policy_file:
        policy_file.write(b"version: 1\n# caf\xe9\n")
    with pytest.raises(PolicyError) as raised:
        load_policy("policy.yaml")
    assert str(raised.value) == "policy.yaml:0:0: policy: cannot read file: not UTF-8 (byte 16)"


def test_malformed_yaml_is_one_issue_at_the_parser_mark(in_tmp):
    assert one_problem("version: 1\nsecrets: a: b\n") == \
        "policy.yaml:2:11: policy: invalid YAML: mapping values are not allowed here"


def test_unclosed_flow_sequence(in_tmp):
    assert one_problem("version: 1\nagents:\n  a: {secrets: [x\n") == (
        "policy.yaml:4:1: policy: invalid YAML: while parsing a flow sequence, expected ',' or"
        " ']', but got '<stream end>'"
    )


def test_tab_indentation(in_tmp):
    assert one_problem("version: 1\n\tsecrets: {}\n") == (
        "policy.yaml:2:1: policy: invalid YAML: while scanning for the next token, found "
        "character '\\t' that cannot start any token"
    )


def test_control_character(in_tmp):
    assert one_problem("version: 1\x07\n") == \
        "policy.yaml:1:11: policy: invalid YAML: control character U+0007 is not allowed"


def test_two_documents(in_tmp):
    assert one_problem("version: 1\n---\nversion: 1\n") == (
        "policy.yaml:2:1: policy: invalid YAML: expected a single document in the stream, "
        "but found another document"
    )


def test_absurdly_deep_nesting_is_an_issue_not_a_crash(in_tmp):
    assert one_problem("version: 1\nx: " + "[" * 50_000 + "\n") == \
        "policy.yaml:1:1: policy: invalid YAML: nested too deeply"


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_file(in_tmp, text):
    assert one_problem(text) == \
        'policy.yaml:1:1: policy: the file is empty; a policy starts with "version: 1"'


def test_top_level_must_be_a_mapping(in_tmp):
    assert one_problem("- version: 1\n") == \
        "policy.yaml:1:1: policy: expected a mapping, got a list"


# --- version --------------------------------------------------------------------------------------


def test_missing_version(in_tmp):
    assert one_problem("secrets: {}\n") == \
        'policy.yaml:1:1: policy: missing required field "version"'


def test_other_version_is_the_only_thing_reported(in_tmp):
    assert one_problem("foo: 1\nversion: 2\n") == \
        "policy.yaml:2:10: version: unsupported version 2: this broker-proxy reads version 1"


def test_quoted_version(in_tmp):
    assert one_problem("version: '1'\n") == \
        'policy.yaml:1:10: version: expected an integer, got "1"'


# --- unknown fields, duplicates, YAML features ----------------------------------------------------


def test_unknown_field_suggests_the_closest_name(in_tmp):
    assert one_problem("""
        version: 1
        secrets:
          github:
            from: vault
            destinations: [{host: api.github.com, prot: 443}]
    """) == ('policy.yaml:5:43: secrets.github.destinations[0].prot: unknown field "prot"; '
             'did you mean "port"?')


def test_unknown_field_without_a_close_name(in_tmp):
    assert one_problem("version: 1\nlogging: {}\n") == \
        'policy.yaml:2:1: logging: unknown field "logging"'


def test_misspelled_top_level_section(in_tmp):
    assert one_problem("version: 1\nsecret: {}\n") == \
        'policy.yaml:2:1: secret: unknown field "secret"; did you mean "secrets"?'


def test_duplicate_secret_name(in_tmp):
    found = problems("""
        version: 1
        secrets:
          github: {from: vault, destinations: [{host: a.example}]}
          github: {from: vault, destinations: [{host: b.example}]}
    """)
    assert found == ['policy.yaml:4:3: secrets.github: duplicate key "github" (first at line 3)']


def test_duplicate_field(in_tmp):
    assert one_problem("""
        version: 1
        secrets:
          github:
            from: vault
            destinations: [{host: a.example}]
            from: env:X
    """) == 'policy.yaml:6:5: secrets.github.from: duplicate key "from" (first at line 4)'


def test_duplicate_top_level_key(in_tmp):
    assert one_problem("version: 1\nversion: 1\n") == \
        'policy.yaml:2:1: version: duplicate key "version" (first at line 1)'


def test_anchors_and_aliases_are_refused(in_tmp):
    assert problems("""
        version: 1
        secrets:
          a: &shared
            from: vault
            destinations: [{host: a.example}]
          b: *shared
    """) == [
        "policy.yaml:3:6: policy: YAML anchors (&name) are not supported; write the value out",
        "policy.yaml:6:6: policy: YAML aliases (*name) are not supported; write the value out",
    ]


def test_merge_keys_are_refused(in_tmp):
    found = problems("""
        version: 1
        secrets:
          a:
            <<: {from: vault}
            destinations: [{host: a.example}]
    """)
    assert 'policy.yaml:4:5: secrets.a: YAML merge keys ("<<") are not supported; write the ' \
           "fields out" in found


def test_custom_tags_are_refused(in_tmp):
    assert one_problem("""
        version: 1
        secrets:
          a:
            from: !!python/name:os.system vault
            destinations: [{host: a.example}]
    """) == ('policy.yaml:4:11: secrets.a.from: unsupported YAML tag "!!python/name:os.system";'
             " use plain values")
    assert one_problem("version: !one 1\n") == \
        'policy.yaml:1:10: version: unsupported YAML tag "!one"; use plain values'


# --- types ----------------------------------------------------------------------------------------


def test_wrong_types_say_what_was_expected(in_tmp):
    assert problems("""
        version: 1
        secrets:
          a:
            from: 1
            placeholder: 12345678
            env: NO
            destinations: {host: a.example}
          b: [from, vault]
        agents:
          bot:
            secrets: github
            max_ttl: 3600
        egress:
          allow: pypi.org
        network:
          allow_addresses: [[127.0.0.1]]
    """) == [
        "policy.yaml:4:11: secrets.a.from: expected a string, got an integer; put it in quotes",
        "policy.yaml:5:18: secrets.a.placeholder: expected a string, got an integer; "
        "put it in quotes",
        "policy.yaml:6:10: secrets.a.env: expected a variable name, got a boolean; "
        "put it in quotes",
        "policy.yaml:7:19: secrets.a.destinations: expected a list of destinations, "
        "got a mapping",
        "policy.yaml:8:6: secrets.b: expected a mapping, got a list",
        "policy.yaml:11:14: agents.bot.secrets: expected a list of strings, got a string",
        "policy.yaml:12:14: agents.bot.max_ttl: expected a duration such as 1h, got an integer",
        "policy.yaml:14:10: egress.allow: expected a list of host names, got a string",
        "policy.yaml:16:21: network.allow_addresses[0]: expected a string, got a list",
    ]


def test_non_decimal_ports_are_refused(in_tmp):
    # YAML 1.1 would read 0443 as octal 291 and 0x1bb as 443: neither is what anyone means.
    assert problems("""
        version: 1
        secrets:
          a:
            from: vault
            destinations: [{host: a.example, port: 0443}, {host: b.example, port: "443"}]
    """) == [
        'policy.yaml:5:44: secrets.a.destinations[0].port: expected an integer, got "0443"',
        'policy.yaml:5:75: secrets.a.destinations[1].port: expected an integer, got "443"',
    ]


# --- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["1github", "git hub", "-x", "a" * 65, "ünïcode", "a/b"])
def test_bad_secret_names(in_tmp, name):
    found = problems(f"""
        version: 1
        secrets:
          "{name}": {{from: vault, destinations: [{{host: a.example}}]}}
    """)
    assert len(found) == 1
    assert found[0].startswith(f"policy.yaml:3:3: secrets.{name}: invalid secret name ")
    assert found[0].endswith(': start with a letter, then up to 63 letters, digits, "_", "." or'
                             ' "-"')


def test_longest_and_dotted_names_are_fine(in_tmp):
    name = "a" + "b.c-d_" * 10 + "xyz"
    policy = load_policy(write(f"""
        version: 1
        secrets:
          {name}: {{from: vault, destinations: [{{host: a.example}}]}}
        agents:
          {name}: {{secrets: [{name}]}}
    """))
    assert len(name) == 64 and name in policy.secrets and name in policy.agents


def test_bad_agent_name(in_tmp):
    assert one_problem("version: 1\nagents:\n  9bot: {}\n").startswith(
        'policy.yaml:3:3: agents.9bot: invalid agent name "9bot"')


# --- secrets --------------------------------------------------------------------------------------


def secret_problem(body: str) -> str:
    """The one problem of a secret named "s" whose fields are ``body``."""
    return one_problem("version: 1\nsecrets:\n  s:\n" + textwrap.indent(
        textwrap.dedent(body).lstrip("\n"), "    "))


@pytest.mark.parametrize("source", [
    "vault", "env:MY_VAR", "env:lower_ok", "file:/run/secrets/token", "file:relative/token",
    "keyring:my-service/me", "keyring:svc/with/slash/user",
])
def test_valid_sources(in_tmp, source):
    policy = load_policy(write(f"""
        version: 1
        secrets:
          s: {{from: "{source}", destinations: [{{host: a.example}}]}}
    """))
    assert policy.secrets["s"].source == source


@pytest.mark.parametrize("source", [
    "Vault", "env:", "env:1X", "env:A-B", "file:", "keyring:", "keyring:svc", "keyring:/user",
    "keyring:svc/", "commands", "",
])
def test_invalid_sources(in_tmp, source):
    assert secret_problem(f"""
        from: "{source}"
        destinations: [{{host: a.example}}]
    """) == ("policy.yaml:4:11: secrets.s.from: not a secret source: use vault, env:VAR, "
             "file:PATH, keyring:SERVICE/USER or command")


def test_credential_pasted_as_source_is_not_repeated(in_tmp):
    credential = "ghp_" + secrets.token_urlsafe(27)
    with pytest.raises(PolicyError) as raised:
        load_policy(write(f"""
            version: 1
            secrets:
              s: {{from: "{credential}", destinations: [{{host: a.example}}]}}
        """))
    assert credential not in str(raised.value)


def test_command_source_needs_argv(in_tmp):
    assert secret_problem("""
        from: command
        destinations: [{host: a.example}]
    """) == ('policy.yaml:3:3: secrets.s: missing required field "command" '
             "(from: command runs it)")
    assert secret_problem("""
        from: command
        command: []
        destinations: [{host: a.example}]
    """) == ("policy.yaml:5:14: secrets.s.command: must name the program to run, "
             "e.g. [pass, show, github]")
    assert secret_problem("""
        from: command
        command: [pass, 7]
        destinations: [{host: a.example}]
    """) == ("policy.yaml:5:21: secrets.s.command[1]: expected a string, got an integer; "
             "put it in quotes")


def test_command_only_with_command_source(in_tmp):
    assert secret_problem("""
        from: vault
        command: [pass, show, x]
        destinations: [{host: a.example}]
    """) == 'policy.yaml:5:5: secrets.s.command: only used with "from: command"'


def test_missing_required_secret_fields(in_tmp):
    assert problems("version: 1\nsecrets:\n  s: {inject: [header]}\n") == [
        'policy.yaml:3:3: secrets.s: missing required field "from"',
        'policy.yaml:3:3: secrets.s: missing required field "destinations"',
    ]


@pytest.mark.parametrize("placeholder", [
    "short", "has space inside", "tab\there1", "ünïcödé-placeholder", "x" * 257,
])
def test_placeholder_shape(in_tmp, placeholder):
    quoted = placeholder.replace("\t", "\\t")
    assert secret_problem(f"""
        from: vault
        placeholder: "{quoted}"
        destinations: [{{host: a.example}}]
    """) == ("policy.yaml:5:18: secrets.s.placeholder: must be 8 to 256 printable ASCII "
             "characters without spaces")


def test_placeholders_must_be_unique(in_tmp):
    assert one_problem("""
        version: 1
        secrets:
          a: {from: vault, placeholder: "tok_00000000", destinations: [{host: a.example}]}
          b: {from: vault, placeholder: "tok_00000000", destinations: [{host: a.example}]}
    """) == 'policy.yaml:4:33: secrets.b.placeholder: placeholder is already used by secret "a"'


def test_placeholders_must_not_contain_each_other(in_tmp):
    assert one_problem("""
        version: 1
        secrets:
          a: {from: vault, placeholder: "tok_00000000_long", destinations: [{host: a.example}]}
          b: {from: vault, placeholder: "tok_00000000", destinations: [{host: a.example}]}
    """) == ('policy.yaml:4:33: secrets.b.placeholder: placeholder overlaps the placeholder of '
             'secret "a": neither may contain the other')


def test_explicit_placeholder_may_not_overlap_a_default_one(in_tmp):
    assert one_problem("""
        version: 1
        secrets:
          a: {from: vault, destinations: [{host: a.example}]}
          b: {from: vault, placeholder: "x{{secret:a}}x", destinations: [{host: a.example}]}
    """) == ('policy.yaml:4:33: secrets.b.placeholder: placeholder overlaps the placeholder of '
             'secret "a": neither may contain the other')


@pytest.mark.parametrize(("inject", "message"), [
    ("[]", "secrets.s.inject: must name at least one place"),
    ("[cookie]", 'secrets.s.inject[0]: unknown place "cookie": use header, query or body'),
])
def test_inject_places(in_tmp, inject, message):
    found = secret_problem(f"""
        from: vault
        destinations: [{{host: a.example}}]
        inject: {inject}
    """)
    assert found.endswith(message) and found.startswith("policy.yaml:6:")


@pytest.mark.parametrize("env", ["github_token", "1TOKEN", "TOKEN-X", "TÖKEN"])
def test_env_variable_grammar(in_tmp, env):
    assert secret_problem(f"""
        from: vault
        destinations: [{{host: a.example}}]
        env: "{env}"
    """).startswith(f'policy.yaml:6:10: secrets.s.env: invalid variable name "{env}"')


def test_env_variable_carries_one_placeholder(in_tmp):
    assert one_problem("""
        version: 1
        secrets:
          a: {from: vault, env: TOKEN, destinations: [{host: a.example}]}
          b: {from: vault, env: TOKEN, destinations: [{host: a.example}]}
    """) == 'policy.yaml:4:25: secrets.b.env: TOKEN already carries the placeholder of secret "a"'


# --- destinations ---------------------------------------------------------------------------------


def destination_problems(destination: str) -> list[str]:
    return problems(f"""
        version: 1
        secrets:
          s:
            from: vault
            destinations:
              - {destination}
    """)


def test_destinations_must_not_be_empty(in_tmp):
    assert secret_problem("""
        from: vault
        destinations: []
    """) == "policy.yaml:5:19: secrets.s.destinations: must list at least one destination"


@pytest.mark.parametrize(("destination", "expected"), [
    ("{port: 443}", 'policy.yaml:6:9: secrets.s.destinations[0]: missing required field "host"'),
    ("{host: a.example, port: 65536}",
     "policy.yaml:6:33: secrets.s.destinations[0].port: must be between 1 and 65535"),
    ("{host: a.example, port: 0}",
     "policy.yaml:6:33: secrets.s.destinations[0].port: must be between 1 and 65535"),
    ("{host: a.example, scheme: ftp}",
     'policy.yaml:6:35: secrets.s.destinations[0].scheme: unknown scheme "ftp": use https or http'),
    ("{host: a.example, methods: []}",
     "policy.yaml:6:36: secrets.s.destinations[0].methods: must name at least one method; "
     "leave it out for the default"),
    ("{host: a.example, methods: [GET, track]}",
     "policy.yaml:6:42: secrets.s.destinations[0].methods[1]: TRACK is never allowed: it could "
     "echo the injected secret back or tunnel it"),
    ("{host: a.example, methods: [CONNECT]}",
     "policy.yaml:6:37: secrets.s.destinations[0].methods[0]: CONNECT is never allowed: it could "
     "echo the injected secret back or tunnel it"),
    ("{host: a.example, methods: ['G ET']}",
     'policy.yaml:6:37: secrets.s.destinations[0].methods[0]: invalid method "G ET"'),
    ("{host: a.example, paths: []}",
     "policy.yaml:6:34: secrets.s.destinations[0].paths: must name at least one path; "
     "leave it out to allow every path"),
    ("{host: a.example, paths: [repos/**]}",
     'policy.yaml:6:35: secrets.s.destinations[0].paths[0]: invalid path pattern "repos/**": '
     "it must start with /"),
    ("{host: a.example, paths: ['/a/b**']}",
     'policy.yaml:6:35: secrets.s.destinations[0].paths[0]: invalid path pattern "/a/b**": '
     '"**" must be a whole segment, e.g. /a/**'),
    ("{host: a.example, paths: ['/search?q=*']}",
     'policy.yaml:6:35: secrets.s.destinations[0].paths[0]: invalid path pattern "/search?q=*": '
     'use printable characters without spaces, "?" or "#"'),
    ("{host: 'API.example.com:443'}",
     'policy.yaml:6:16: secrets.s.destinations[0].host: invalid host "API.example.com:443": '
     "write the host name alone; a port belongs in port:"),
    ("{host: 'https://a.example'}",
     'policy.yaml:6:16: secrets.s.destinations[0].host: invalid host "https://a.example": '
     "write the host name alone, without a scheme, user or path"),
    ("{host: 'a.example/x'}",
     'policy.yaml:6:16: secrets.s.destinations[0].host: invalid host "a.example/x": write the '
     "host name alone, without a scheme, user or path"),
    ("{host: 'a_b c.example'}",
     'policy.yaml:6:16: secrets.s.destinations[0].host: invalid host "a_b c.example": each '
     'dot-separated label must be 1 to 63 letters, digits, "-" or "_"'),
    ("{host: '*.com'}",
     'policy.yaml:6:16: secrets.s.destinations[0].host: invalid host pattern "*.com": a wildcard '
     "must cover a domain of at least two labels, e.g. *.example.com"),
    ("{host: 'api.*.example.com'}",
     'policy.yaml:6:16: secrets.s.destinations[0].host: invalid host pattern "api.*.example.com":'
     " a wildcard must be the whole first label, e.g. *.example.com"),
])
def test_destination_problems(in_tmp, destination, expected):
    assert destination_problems(destination) == [expected]


def test_methods_are_upper_cased_and_paths_kept_in_order(in_tmp):
    policy = load_policy(write("""
        version: 1
        secrets:
          s:
            from: vault
            destinations:
              - {host: a.example, methods: [get, Patch, PROPFIND], paths: [/b, /a, /b]}
    """))
    destination = policy.secrets["s"].destinations[0]
    assert destination.methods == {"GET", "PATCH", "PROPFIND"}
    assert destination.paths == ("/b", "/a")


def test_ip_literal_hosts_are_canonical(in_tmp):
    policy = load_policy(write("""
        version: 1
        secrets:
          s:
            from: vault
            destinations: [{host: "[2001:DB8::0:1]"}, {host: 127.0.0.1}]
    """))
    assert [d.host for d in policy.secrets["s"].destinations] == ["2001:db8::1", "127.0.0.1"]


# --- agents ---------------------------------------------------------------------------------------


def test_agent_naming_an_undefined_secret(in_tmp):
    assert problems("""
        version: 1
        secrets:
          github: {from: vault, destinations: [{host: api.github.com}]}
        agents:
          bot:
            secrets:
              - github
              - githbu
              - jira
    """) == [
        'policy.yaml:8:9: agents.bot.secrets[1]: undefined secret "githbu"; did you mean "github"?',
        'policy.yaml:9:9: agents.bot.secrets[2]: undefined secret "jira"',
    ]


def test_agent_naming_a_broken_secret_gets_no_second_error(in_tmp):
    assert problems("""
        version: 1
        secrets:
          github: {from: nowhere, destinations: [{host: api.github.com}]}
        agents:
          bot: {secrets: [github]}
    """) == [
        "policy.yaml:3:18: secrets.github.from: not a secret source: use vault, env:VAR, "
        "file:PATH, keyring:SERVICE/USER or command",
    ]


def test_approval_must_be_among_the_agents_secrets(in_tmp):
    assert one_problem("""
        version: 1
        secrets:
          a: {from: vault, destinations: [{host: a.example}]}
          b: {from: vault, destinations: [{host: b.example}]}
        agents:
          bot: {secrets: [a], approval: [b]}
    """) == "policy.yaml:6:34: agents.bot.approval[0]: secret \"b\" is not in this agent's secrets"


@pytest.mark.parametrize(("ttl", "message"), [
    ("0m", 'invalid duration "0m": must be longer than zero'),
    ("31d", 'invalid duration "31d": must be at most 30d'),
    ("1 hour", 'invalid duration "1 hour": use a number with s, m, h or d, e.g. 15m'),
])
def test_bad_ttl(in_tmp, ttl, message):
    assert one_problem(f"version: 1\nagents:\n  bot:\n    max_ttl: {ttl}\n") == \
        f"policy.yaml:4:14: agents.bot.max_ttl: {message}"


def test_unknown_agent_field(in_tmp):
    assert one_problem("version: 1\nagents:\n  bot:\n    ttl: 1h\n") == \
        'policy.yaml:4:5: agents.bot.ttl: unknown field "ttl"'
    assert one_problem("version: 1\nagents:\n  bot:\n    max-ttl: 1h\n") == \
        'policy.yaml:4:5: agents.bot.max-ttl: unknown field "max-ttl"; did you mean "max_ttl"?'


# --- egress and network ---------------------------------------------------------------------------


def test_bad_cidr(in_tmp):
    assert one_problem("version: 1\nnetwork:\n  allow_addresses: [10.0.0.0/8, 10.0.0.0/33]\n") == (
        'policy.yaml:3:33: network.allow_addresses[1]: invalid address range "10.0.0.0/33": '
        "use a CIDR such as 127.0.0.0/8"
    )


def test_unknown_egress_and_network_fields(in_tmp):
    assert problems("version: 1\negress:\n  allwo: []\nnetwork:\n  allow: []\n") == [
        'policy.yaml:3:3: egress.allwo: unknown field "allwo"; did you mean "allow"?',
        'policy.yaml:5:3: network.allow: unknown field "allow"',
    ]


def test_a_method_outside_the_http_registry_is_refused_with_a_suggestion(in_tmp):
    found = one_problem("""
        version: 1
        secrets:
          s:
            from: vault
            destinations:
              - {host: a.example, methods: [GET, POTS]}
    """)
    assert 'unknown HTTP method "POTS"' in found
    assert 'did you mean "POST"?' in found
    assert "secrets.s.destinations[0].methods[1]" in found


def test_network_resolve_pins_load_and_a_bad_one_is_named_where_it_is(in_tmp):
    policy = load_policy(write(
        "version: 1\nnetwork:\n  resolve: [\"api.example.com:443=127.0.0.1:8443\", "
        "\"Other.Example.com.=[::1]\"]\n"))
    assert dict(policy.resolve) == {("api.example.com", 443): ("127.0.0.1", 8443),
                                    ("other.example.com", None): ("::1", None)}
    assert one_problem("version: 1\nnetwork:\n  resolve: [api.example.com=not-an-address]\n") == (
        'policy.yaml:3:13: network.resolve[0]: invalid pin "api.example.com=not-an-address": '
        "use HOST[:PORT]=IP[:PORT], such as api.example.com:443=127.0.0.1:8443")


def _pairwise_clashes(placeholders: list[str]) -> list[tuple[int, int, bool]]:
    """The plain check: each placeholder against every earlier one, first clash reported."""
    found = []
    for index, placeholder in enumerate(placeholders):
        for other_index, other in enumerate(placeholders[:index]):
            if placeholder in other or other in placeholder:
                found.append((index, other_index, placeholder == other))
                break
    return found


@pytest.mark.parametrize("seed", range(30))
def test_the_placeholder_index_reports_what_the_pairwise_check_does(seed: int) -> None:
    import random

    import yaml

    from broker_proxy.policy.field_checker import FieldChecker
    from broker_proxy.policy.placeholder_fields import check_placeholders_apart

    rng = random.Random(seed)
    names = ["a", "ab", "b", "key", "key.2", "k-1"]
    pool = [*("{{secret:" + n + "}}" for n in names), "{{secret:a", "secret:ab}}", "ab",
            "PLACEHOLDER-1", "PLACEHOLDER-12", "x{{secret:key}}y", "{{secret:b}}"]
    placeholders = [rng.choice(pool) for _ in range(rng.randint(1, 12))]
    checker = FieldChecker("policy.yaml")
    entries = [(f"s{i}", p, yaml.Mark("", 0, i, 0, None, None), f"secrets.s{i}.placeholder")
               for i, p in enumerate(placeholders)]
    check_placeholders_apart(entries, checker)
    reported = [(issue.line - 1, issue.message) for issue in checker.issues]
    expected = [(index, (f'placeholder is already used by secret "s{other}"' if equal else
                         f'placeholder overlaps the placeholder of secret "s{other}": '
                         "neither may contain the other"))
                for index, other, equal in _pairwise_clashes(placeholders)]
    assert reported == expected


_MISTAKES = [
    "version: 1\nsecrets:\n  k:\n    from: vault\n    destinations: [{host: a.example}]\n"
    "    inject: [nowhere]\nagents: {}\n",
    "version: 1\nsecrets:\n  k:\n    from: vault\n    destinations:\n      - host: a.example\n"
    "        port: 99999\nagents:\n  bot: {secrets: [k, missing]}\n",
    "version: 1\nsecrets:\n  k: {from: vault, destinations: [{host: a.example}]}\n"
    "  k: {from: vault}\n",
    "version: 1\nsecrets: [unclosed\n",
]


@pytest.mark.parametrize("text", _MISTAKES)
def test_libyaml_and_pure_python_yaml_report_the_same_lines_and_columns(
        in_tmp, monkeypatch, text: str) -> None:
    import yaml

    from broker_proxy.policy import yaml_compose

    if not yaml.__with_libyaml__:
        pytest.skip("PyYAML without libyaml")
    assert (yaml_compose.compose_fast(text) is False) == ("unclosed" in text)  # the fast path ran
    fast = problems(text)
    monkeypatch.setattr(yaml_compose, "compose_fast", lambda text: False)
    assert problems(text) == fast
    assert fast


def test_per_request_approval_fields(in_tmp):
    policy = load_policy(write(textwrap.dedent("""\
        version: 1
        approval_timeout: 90s
        approval_webhook: https://hooks.example.com/services/T0/B0/abc
        secrets:
          pay:
            from: vault
            approval: per_request
            destinations: [{host: api.example.com}]
          plain:
            from: vault
            destinations: [{host: api.example.com}]
        """)))
    assert policy.secrets["pay"].per_request_approval
    assert not policy.secrets["plain"].per_request_approval
    assert policy.approval_timeout == timedelta(seconds=90)
    assert policy.approval_webhook == "https://hooks.example.com/services/T0/B0/abc"
    assert load_policy_text("version: 1\n").approval_timeout == timedelta(minutes=2)


@pytest.mark.parametrize(("snippet", "message"), [
    ("approval_timeout: 2h\n", "approval_timeout: must be at most 1h"),
    ("approval_webhook: ftp://x/secret-path\n",
     "approval_webhook: must be an http:// or https:// URL with a host"),
    ("secrets:\n  s:\n    from: vault\n    approval: always\n"
     "    destinations: [{host: a.example.com}]\n",
     'secrets.s.approval: unknown approval "always": the only one is "per_request"'),
])
def test_per_request_approval_field_errors(in_tmp, snippet, message):
    found = one_problem("version: 1\n" + snippet)
    assert found.endswith(message), found
    assert "secret-path" not in found
