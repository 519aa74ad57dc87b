"""The JSON Schema and the loader agree: on every example policy, and on every error case.

Both come from one definition (broker_proxy/policy/spec.py). Each error case below is one the
loader refuses; where a JSON Schema can say the same thing, the schema must refuse it too, at
the same place; where it cannot (canonical hosts, YAML-level rules, cross references), the case
says so, and the schema must accept it, so moving a rule between the two is a visible change.
"""

from pathlib import Path

import jsonschema
import pytest
import yaml

from broker_proxy.cli import main
from broker_proxy.policy.loader import PolicyError, load_policy, load_policy_text
from broker_proxy.policy.schema import policy_json_schema

POLICIES = sorted(p for p in (Path(__file__).resolve().parent.parent / "policies").glob("*.yaml")
                  if not p.name.endswith(".policy-test.yaml"))
VALIDATOR = jsonschema.Draft202012Validator(policy_json_schema())

SECRET = "    from: vault\n    destinations:\n      - host: api.example.com\n"


def with_secret(body: str = SECRET, extra: str = "") -> str:
    return f"version: 1\nsecrets:\n  x:\n{body}{extra}"


def with_destination(lines: str) -> str:
    return with_secret("    from: vault\n    destinations:\n      - host: api.example.com\n"
                       + "".join(f"        {line}\n" for line in lines.splitlines()))


def with_agent(lines: str) -> str:
    return with_secret(extra="agents:\n  bot:\n" + "".join(
        f"    {line}\n" for line in lines.splitlines()))


BOTH = True  # the schema refuses it too
LOADER = False  # only the loader can tell

# (id, policy text, field path the loader reports, whether the schema must refuse it too)
ERROR_CASES = [
    ("empty file", "", "policy", BOTH),
    ("not a mapping", "- a\n", "policy", BOTH),
    ("missing version", "secrets:\n", "policy", BOTH),
    ("version 2", "version: 2\n", "version", BOTH),
    ("quoted version", 'version: "1"\n', "version", BOTH),
    ("unknown section", "version: 1\nsecret: {}\n", "secret", BOTH),
    ("secrets as a list", "version: 1\nsecrets: [a]\n", "secrets", BOTH),
    ("bad secret name", with_secret().replace("  x:", "  1x:"), "secrets.1x", BOTH),
    ("missing from", with_secret("    destinations: [{host: a.example.com}]\n"),
     "secrets.x", BOTH),
    ("missing destinations", with_secret("    from: vault\n"), "secrets.x", BOTH),
    ("unknown secret field", with_secret(SECRET + "    destinatons: []\n"),
     "secrets.x.destinatons", BOTH),
    ("bad source", with_secret(SECRET.replace("vault", "nope")), "secrets.x.from", BOTH),
    ("command without argv", with_secret(SECRET.replace("vault", "command")), "secrets.x",
     LOADER),
    ("command with vault", with_secret(SECRET + "    command: [op]\n"), "secrets.x.command",
     LOADER),
    ("short placeholder", with_secret(SECRET + "    placeholder: abc\n"),
     "secrets.x.placeholder", BOTH),
    ("placeholder with a space", with_secret(SECRET + '    placeholder: "a b c d e f g h"\n'),
     "secrets.x.placeholder", BOTH),
    ("placeholders overlap", with_secret(SECRET + '    placeholder: "{{secret:y}}"\n'
                                         ).replace("secrets:\n", "secrets:\n  y:\n" + SECRET),
     "secrets.x.placeholder", LOADER),
    ("no destinations", with_secret("    from: vault\n    destinations: []\n"),
     "secrets.x.destinations", BOTH),
    ("destination without host", with_secret("    from: vault\n    destinations: [{port: 1}]\n"),
     "secrets.x.destinations[0]", BOTH),
    ("host with a scheme", with_secret(SECRET.replace("api.example.com", "https://a.b")),
     "secrets.x.destinations[0].host", BOTH),
    ("wildcard over a TLD", with_secret(SECRET.replace("api.example.com", '"*.com"')),
     "secrets.x.destinations[0].host", LOADER),
    ("port 0", with_destination("port: 0"), "secrets.x.destinations[0].port", BOTH),
    ("port too big", with_destination("port: 70000"), "secrets.x.destinations[0].port", BOTH),
    ("port as a string", with_destination('port: "443"'), "secrets.x.destinations[0].port",
     BOTH),
    ("octal port", with_destination("port: 0443"), "secrets.x.destinations[0].port", LOADER),
    ("unknown scheme", with_destination("scheme: ftp"), "secrets.x.destinations[0].scheme",
     BOTH),
    ("no methods", with_destination("methods: []"), "secrets.x.destinations[0].methods", BOTH),
    ("TRACE", with_destination("methods: [TRACE]"), "secrets.x.destinations[0].methods", BOTH),
    ("lower-case connect", with_destination("methods: [connect]"),
     "secrets.x.destinations[0].methods", BOTH),
    ("method with a space", with_destination('methods: ["G E T"]'),
     "secrets.x.destinations[0].methods", BOTH),
    ("no paths", with_destination("paths: []"), "secrets.x.destinations[0].paths", BOTH),
    ("relative path", with_destination("paths: [repos]"), "secrets.x.destinations[0].paths",
     BOTH),
    ("query in a path", with_destination('paths: ["/a?b"]'),
     "secrets.x.destinations[0].paths", BOTH),
    ("** inside a segment", with_destination('paths: ["/a/**b"]'),
     "secrets.x.destinations[0].paths", LOADER),
    ("path that never matches", with_destination('paths: ["/a//b"]'),
     "secrets.x.destinations[0].paths", LOADER),
    ("unknown destination field", with_destination("prot: 443"),
     "secrets.x.destinations[0].prot", BOTH),
    ("unknown inject place", with_secret(SECRET + "    inject: [cookie]\n"),
     "secrets.x.inject", BOTH),
    ("empty inject", with_secret(SECRET + "    inject: []\n"), "secrets.x.inject", BOTH),
    ("lower-case env", with_secret(SECRET + "    env: token\n"), "secrets.x.env", BOTH),
    ("env twice", with_secret(SECRET + "    env: TOKEN\n").replace(
        "secrets:\n", "secrets:\n  y:\n" + SECRET + "    env: TOKEN\n"), "secrets.x.env",
     LOADER),
    ("oauth2 without client_id", with_secret(
        SECRET + "    oauth2: {token_url: 'https://t.example.org/t', grant_type: "
                 "client_credentials}\n"), "secrets.x.oauth2", BOTH),
    ("oauth2 grant type", with_secret(
        SECRET + "    oauth2: {token_url: 'https://t.example.org/t', grant_type: password, "
                 "client_id: c}\n"), "secrets.x.oauth2", BOTH),
    ("oauth2 over http", with_secret(
        SECRET + "    oauth2: {token_url: 'http://t.example.org/t', grant_type: "
                 "client_credentials, client_id: c}\n"), "secrets.x.oauth2", BOTH),
    ("basic user with a colon", with_secret(SECRET + '    basic: {username: "a:b"}\n'),
     "secrets.x.basic", BOTH),
    ("basic without a user", with_secret(SECRET + "    basic: {}\n"), "secrets.x.basic", BOTH),
    ("format length 0", with_secret(
        SECRET + "    placeholder_format: {prefix: ab_, length: 0}\n"),
     "secrets.x.placeholder_format", BOTH),
    ("format prefix too short", with_secret(
        SECRET + "    placeholder_format: {prefix: a, length: 40}\n"),
     "secrets.x.placeholder_format", BOTH),
    ("placeholder and format", with_secret(
        SECRET + "    placeholder: abcdefghij\n"
                 "    placeholder_format: {prefix: ab_, length: 40}\n"),
     "secrets.x.placeholder_format", LOADER),
    ("cache_ttl as words", with_secret(SECRET.replace("vault", "command") + "    command: [a]\n"
                                       "    cache_ttl: 5 minutes\n"), "secrets.x.cache_ttl",
     BOTH),
    ("cache_ttl for the vault", with_secret(SECRET + "    cache_ttl: 5m\n"),
     "secrets.x.cache_ttl", LOADER),
    ("unknown signer", with_secret(SECRET + "    sign: aws\n"), "secrets.x.sign", BOTH),
    ("aws without regions", with_destination("aws: {services: [s3]}"),
     "secrets.x.destinations[0].aws", BOTH),
    ("client_cert from the vault", with_secret(SECRET + "    client_cert: vault\n"),
     "secrets.x.client_cert", BOTH),
    ("template without a value", with_secret(SECRET + "    inject: [{header: X-Key}]\n"),
     "secrets.x.inject", BOTH),
    ("template header with a space", with_secret(
        SECRET + '    inject: [{header: "X Key", value: "{secret}"}]\n'), "secrets.x.inject",
     BOTH),
    ("template for Host", with_secret(SECRET + '    inject: [{header: Host, value: "{secret}"}]\n'),
     "secrets.x.inject", LOADER),
    ("agent naming an undefined secret", with_agent("secrets: [y]"), "agents.bot.secrets",
     LOADER),
    ("max_ttl as words", with_agent("secrets: [x]\nmax_ttl: forever"), "agents.bot.max_ttl",
     BOTH),
    ("approval outside the agent's secrets", with_agent("secrets: []\napproval: [x]"),
     "agents.bot.approval", LOADER),
    ("unknown agent field", with_agent("secret: [x]"), "agents.bot.secret", BOTH),
    ("agent with nothing", with_secret(extra="agents:\n  bot:\n"), "agents.bot", BOTH),
    ("egress URL", with_secret(extra="egress:\n  allow: ['https://a.example.com/']\n"),
     "egress.allow", BOTH),
    ("not a CIDR", with_secret(extra="network:\n  allow_addresses: [nope]\n"),
     "network.allow_addresses", LOADER),
    ("anchor", with_secret(extra="agents:\n  a: &x {secrets: [x]}\n  b: *x\n"), "policy",
     LOADER),
    ("merge key", with_secret(extra="agents:\n  a: {secrets: [x], <<: {max_ttl: 1h}}\n"),
     "agents.a", LOADER),
    ("custom tag", "version: !!python/name:os.system 1\n", "version", LOADER),
    ("duplicate key", with_secret(extra="version: 1\n"), "version", LOADER),
]


def schema_paths(data: object) -> set[str]:
    """Where the schema objects, as the loader's field paths (an unknown key: the key)."""
    found = set()
    for error in VALIDATOR.iter_errors(data):
        parts = list(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            extra = set(error.instance) - set(error.schema.get("properties", {}))
            found |= {field_path([*parts, name]) for name in extra}
        else:
            found.add(field_path(parts))
    return found


def field_path(parts: list) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "policy"


def near(a: str, b: str) -> bool:
    return a == b or any(long.startswith(short + sep) for short, long in ((a, b), (b, a))
                         for sep in (".", "["))


@pytest.mark.parametrize(("text", "where", "schema_too"),
                         [case[1:] for case in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_error_case_loader_and_schema_agree(text, where, schema_too):
    with pytest.raises(PolicyError) as raised:
        load_policy_text(text, "p.yaml")
    loader_paths = {issue.field_path for issue in raised.value.issues}
    assert any(near(path, where) for path in loader_paths), loader_paths
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        assert not schema_too
        return
    objections = schema_paths(data)
    if schema_too:
        assert any(near(a, b) for a in objections for b in loader_paths), (objections,
                                                                           loader_paths)
    else:
        assert objections == set(), "the schema now checks this too: mark the case BOTH"


@pytest.mark.parametrize("path", POLICIES, ids=lambda path: path.name)
def test_every_example_passes_loader_and_schema(path):
    load_policy(path)
    assert list(VALIDATOR.iter_errors(yaml.safe_load(path.read_text()))) == []


def test_schema_is_itself_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(policy_json_schema())


def test_schema_command_prints_the_generated_schema(capsys):
    import json

    assert main(["policy", "schema"]) == 0
    assert json.loads(capsys.readouterr().out) == policy_json_schema()
