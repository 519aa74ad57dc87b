"""A destination's ``withhold`` list: the loader, schema, index, matching, diff, explain and CLI.

The answers themselves (502 through the real proxy, the audit record) are in
tests/security/test_e2e_withhold.py.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from broker_proxy.cli import main
from broker_proxy.decision.active_policy import ActivePolicy
from broker_proxy.devtools import prefork
from broker_proxy.policy import DestinationIndex, PolicyError, load_policy_text
from broker_proxy.policy.diff import diff_policies
from broker_proxy.policy.media_types import WithholdRule, pattern_covers, sniffed_media_types
from broker_proxy.policy.schema import policy_json_schema
from broker_proxy.policy_tools.explain import explain

DOC = Path(__file__).resolve().parent.parent / "docs" / "scrubbing-forms.md"
VALIDATOR = jsonschema.Draft202012Validator(policy_json_schema())

POLICY = """\
version: 1
secrets:
  k:
    from: vault
    destinations:
      - host: api.example.com
        paths: ["/v1/**"]
        withhold: [application/x-7z-compressed, Application/PDF, "application/*zip*"]
      - host: "*.files.example.com"
        withhold: [application/vnd.rar]
      - host: plain.example.com
  other:
    from: vault
    destinations:
      - host: plain.example.com
"""


def doc_policy() -> str:
    """The YAML block of docs/scrubbing-forms.md's `withhold` section, as the reader sees it."""
    text = DOC.read_text()
    section = text.split("## Withholding what cannot be looked inside", 1)[1]
    return re.search(r"```yaml\n(.*?)```", section, re.DOTALL).group(1)  # type: ignore[union-attr]


def test_the_documented_example_loads_and_withholds_at_its_host_only() -> None:
    text = doc_policy()
    policy = load_policy_text(text, "docs.yaml")
    assert list(VALIDATOR.iter_errors(yaml.safe_load(text))) == []
    index = DestinationIndex(policy)
    rule = index.withhold_at("files.example.com")
    assert rule is not None
    assert rule.declared("application/x-7z-compressed") == "application/x-7z-compressed"
    assert rule.declared("image/png") == "image/*"
    assert rule.declared("application/x-zip-compressed") == "application/*zip*"
    assert rule.declared("application/json") is None
    assert index.withhold_at("api.example.com") is None


def test_withholding_goes_by_host_any_path_and_wildcards_cover_subdomains() -> None:
    index = DestinationIndex(load_policy_text(POLICY, "p.yaml"))
    rule = index.withhold_at("api.example.com")
    assert rule is not None and rule.patterns == (
        "application/*zip*", "application/pdf", "application/x-7z-compressed")
    assert index.withhold_at("a.files.example.com").patterns == ("application/vnd.rar",)
    assert index.withhold_at("files.example.com") is None  # "*." is one label or more
    assert index.withhold_at("plain.example.com") is None
    # No withhold anywhere: answered before any lookup.
    bare = DestinationIndex(load_policy_text(POLICY.replace("withhold", "paths").replace(
        "[application/x-7z-compressed, Application/PDF, \"application/*zip*\"]",
        '["/x"]').replace("[application/vnd.rar]", '["/y"]').replace(
        '        paths: ["/v1/**"]\n', ""), "p.yaml"))
    assert bare.withhold_at("api.example.com") is None


def test_the_label_is_read_without_parameters_in_any_case() -> None:
    rule = WithholdRule(["application/pdf", "application/*zip*"])
    assert rule.declared("Application/PDF; charset=binary") == "application/pdf"
    assert rule.declared("  application/zip ") == "application/*zip*"
    assert rule.declared("application/pdfx") is None
    assert rule.declared(None) is None and rule.declared("") is None
    assert rule.declared("garbage") is None
    # Two Content-Type fields (joined by ", "): either one listed is enough.
    assert rule.declared("text/plain, application/pdf") == "application/pdf"
    assert rule.declared("text/plain, text/html") is None


@pytest.mark.parametrize(("head", "media"), [
    (b"7z\xbc\xaf\x27\x1c\x00\x04", "application/x-7z-compressed"),
    (b"Rar!\x1a\x07\x01\x00", "application/vnd.rar"),
    (b"%PDF-1.7\n%", "application/pdf"),
    (b"PK\x03\x04\x14\x00", "application/zip"),
    (b"\x1f\x8b\x08\x00", "application/gzip"),
    (b"BZh91AY&SY", "application/x-bzip2"),
])
def test_the_first_bytes_name_a_media_type(head: bytes, media: str) -> None:
    assert media in sniffed_media_types(head)
    assert WithholdRule([media]).sniffed(head) == media


def test_the_response_path_holds_enough_bytes_to_tell() -> None:
    # The body's first SNIFF_LENGTH bytes are held before anything is passed on.
    from broker_proxy.policy.media_types import SNIFF_BYTES
    from broker_proxy.scrubbing.nested_bodies import SNIFF_LENGTH

    assert SNIFF_BYTES <= SNIFF_LENGTH


def test_text_is_not_taken_for_an_archive() -> None:
    for head in (b"", b"BZh is a word", b"7z archives", b"{\"a\": 1}", b"%PD"):
        assert sniffed_media_types(head) == ()
    assert WithholdRule(["application/pdf"]).sniffed(b"PK\x03\x04") is None


def _issues(text: str) -> list[str]:
    with pytest.raises(PolicyError) as raised:
        load_policy_text(text, "p.yaml")
    return [f"{i.line}:{i.column}: {i.field_path}: {i.message}" for i in raised.value.issues]


@pytest.mark.parametrize(("entry", "where"), [
    ('["application/pdf; q=1"]', "7:20: secrets.k.destinations[0].withhold[0]"),
    ("[pdf]", "7:20: secrets.k.destinations[0].withhold[0]"),
    ('["application/p df"]', "7:20: secrets.k.destinations[0].withhold[0]"),
    ("[]", "7:19: secrets.k.destinations[0].withhold"),
    ("application/pdf", "7:19: secrets.k.destinations[0].withhold"),
    ("[1]", "7:20: secrets.k.destinations[0].withhold[0]"),
])
def test_a_bad_entry_is_reported_where_it_is_and_the_schema_refuses_it_too(
        entry: str, where: str) -> None:
    text = ("version: 1\nsecrets:\n  k:\n    from: vault\n    destinations:\n"
            f"      - host: api.example.com\n        withhold: {entry}\n")
    issues = _issues(text)
    assert len(issues) == 1 and issues[0].startswith(where), issues
    assert list(VALIDATOR.iter_errors(yaml.safe_load(text))), "the schema must refuse it too"


def test_policy_check_prints_file_line_column(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(POLICY.replace("Application/PDF", '"application/pdf;x"'))
    done = prefork.run([sys.executable, "-m", "broker_proxy.cli", "--home", str(tmp_path),
                           "policy", "check", str(bad)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"{bad}:8:") and "withhold[1]" in line
    assert "Traceback" not in done.stderr


def _diff(old: str, new: str) -> list[tuple[str, str, bool]]:
    return [(c.kind, c.detail, c.widening) for c in diff_policies(
        load_policy_text(old, "old.yaml"), load_policy_text(new, "new.yaml"))]


def test_diff_a_removed_entry_widens_an_added_one_narrows() -> None:
    removed = POLICY.replace(', Application/PDF', "")
    assert _diff(POLICY, removed) == [(
        "withhold_removed", "answers of media type application/pdf from api.example.com are "
        "no longer withheld", True)]
    assert _diff(removed, POLICY) == [(
        "withhold_added", "answers of media type application/pdf from api.example.com are "
        "withheld", False)]
    # The whole list gone: every entry widens.
    gone = POLICY.replace("        withhold: [application/vnd.rar]\n", "")
    assert _diff(POLICY, gone) == [(
        "withhold_removed", "answers of media type application/vnd.rar from *.files.example.com"
        " are no longer withheld", True)]


def test_diff_a_pattern_that_still_covers_the_removed_one_is_not_a_widening() -> None:
    broader = POLICY.replace("Application/PDF", '"application/*"')
    kinds = {(kind, widening) for kind, _, widening in _diff(POLICY, broader)}
    assert kinds == {("withhold_added", False)}
    assert pattern_covers("*/*", "application/*zip*")
    assert not pattern_covers("application/pdf", "application/*")


def test_diff_cli_gates_on_a_removed_entry(tmp_path: Path) -> None:
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(POLICY)
    new.write_text(POLICY.replace(', Application/PDF', ""))
    assert main(["policy", "diff", "--fail-on-widening", str(old), str(new)]) == 1
    assert main(["policy", "diff", "--fail-on-widening", str(new), str(old)]) == 0


def test_explain_names_the_withheld_media_types(tmp_path: Path, capsys) -> None:
    policy = ActivePolicy.build(load_policy_text(POLICY, "p.yaml"))
    answer = explain(policy, "GET", "https://api.example.com/anything")
    assert answer.withheld == ("application/*zip*", "application/pdf",
                               "application/x-7z-compressed")
    assert answer.as_dict()["withheld_media_types"] == list(answer.withheld)
    plain = explain(policy, "GET", "https://plain.example.com/")
    assert plain.withheld == () and "withheld_media_types" not in plain.as_dict()
    path = tmp_path / "p.yaml"
    path.write_text(POLICY)
    assert main(["--home", str(tmp_path), "policy", "explain", "--policy", str(path), "GET",
                 "https://x.files.example.com:8443/a"]) == 0
    out = capsys.readouterr().out
    assert "answers withheld (502 response_withheld) when their media type is: " \
           "application/vnd.rar" in out
    assert main(["--home", str(tmp_path), "policy", "explain", "--policy", str(path), "--json",
                 "GET", "https://api.example.com/v1/x"]) == 0
    assert json.loads(capsys.readouterr().out)["withheld_media_types"][1] == "application/pdf"
