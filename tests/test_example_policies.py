"""Every policy under policies/ loads, and the JSON Schema knows every key they use."""

import json
from pathlib import Path

import pytest
import yaml

from broker_proxy.policy.destinations import DestinationIndex
from broker_proxy.policy.loader import load_policy
from broker_proxy.policy.schema import policy_json_schema
from broker_proxy.policy.spec import FIELDS

# The policies themselves, not their tests (*.policy-test.yaml) that sit beside them.
POLICIES = sorted(path for path in (Path(__file__).resolve().parent.parent / "policies")
                  .glob("*.yaml") if not path.name.endswith(".policy-test.yaml"))


def test_the_three_examples_exist():
    assert {path.name for path in POLICIES} >= {"example.yaml", "minimal.yaml", "local-test.yaml"}


@pytest.mark.parametrize("path", POLICIES, ids=lambda path: path.name)
def test_example_policy_is_valid(path):
    policy = load_policy(path)
    assert policy.secrets, "an example without secrets shows nothing"
    for agent in policy.agents.values():
        assert agent.secrets <= set(policy.secrets)
    DestinationIndex(policy)  # builds: every glob compiles


def _resolve(schema: dict, node: dict) -> dict:
    ref = node.get("$ref")
    if ref is None:
        return node
    assert ref.startswith("#/$defs/"), ref
    return _resolve(schema, schema["$defs"][ref.removeprefix("#/$defs/")])


def _unknown_keys(schema: dict, node: dict, value: object, path: str) -> list[str]:
    """Walk ``value`` along ``node``'s properties; keys the schema does not describe."""
    node = _resolve(schema, node)
    if "oneOf" in node and isinstance(value, dict):  # e.g. inject: a place or a template
        objects = [_resolve(schema, option) for option in node["oneOf"]]
        node = next((option for option in objects if "properties" in option), node)
    found = []
    if isinstance(value, dict):
        properties = node.get("properties")
        for key, item in value.items():
            if properties is not None:
                if key not in properties:
                    found.append(f"{path}.{key}")
                    continue
                found += _unknown_keys(schema, properties[key], item, f"{path}.{key}")
            elif isinstance(node.get("additionalProperties"), dict):
                found += _unknown_keys(schema, node["additionalProperties"], item, f"{path}.{key}")
            else:
                found.append(f"{path}.{key}")
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for index, item in enumerate(value):
            found += _unknown_keys(schema, node["items"], item, f"{path}[{index}]")
    return found


@pytest.mark.parametrize("path", POLICIES, ids=lambda path: path.name)
def test_schema_knows_every_key_of_the_example(path):
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert _unknown_keys(policy_json_schema(), policy_json_schema(), data, "policy") == []


def test_schema_walker_does_notice_unknown_keys():
    data = {"version": 1, "secrets": {"a": {"from": "vault", "destinatons": []}}}
    assert _unknown_keys(policy_json_schema(), policy_json_schema(), data, "policy") == \
        ["policy.secrets.a.destinatons"]


def test_schema_fields_are_the_loaders_fields():
    schema = policy_json_schema()
    described = {kind: set((schema if kind == "policy" else schema["$defs"][kind])["properties"])
                 for kind in FIELDS}
    assert described == {kind: set(fields) for kind, fields in FIELDS.items()}
    assert schema["$defs"]["secret"]["required"] == ["from", "destinations"]
    assert schema["required"] == ["version"]


def test_schema_is_closed_json_schema_2020_12():
    schema = policy_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    json.dumps(schema)  # plain JSON all the way down
    for kind in ("secret", "destination", "agent"):
        assert schema["$defs"][kind]["additionalProperties"] is False
    assert schema["additionalProperties"] is False
