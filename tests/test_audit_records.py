"""Typed drafts and sealed records: the bytes on disk stay the ones the chain has always had,
and several records can go in one write and one group commit."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from pathlib import Path

import pytest

import broker_proxy.audit.chain_file as chain_file
from broker_proxy.audit import AuditLog, AuditRecordError, verify_chain
from broker_proxy.audit.record_schema import record_problem
from broker_proxy.audit.records import RecordDraft

# Written by the writer before it was split by job (same key, same clock), byte for byte: the
# canonical form, the MAC and the chain must never change under a refactoring.
GOLDEN = (
    b'{"agent":"bot","decision":"allow","duration_ms":1.5,"event":"request","fingerprints":'
    b'["a:1"],"grant":"g_1","host":"api.example.com","mac":"fb2c96713bc082b43fbc63e08781617d4'
    b'36804a86e34a6e08b162cdb5d9da379","method":"GET","path":"/v1/x","port":443,"prev":"0000'
    b'000000000000000000000000000000000000000000000000000000000000","reason":"injected","repli'
    b'ca":"r1","scheme":"https","secrets":["a","b"],"seq":0,"status":null,"task":"t\\u2028","t'
    b's":"2026-12-07T12:00:00.000Z"}\n'
    b'{"agent":null,"decision":"allow","duration_ms":null,"event":"response","grant":null,"hos'
    b't":null,"mac":"d373c39114ec7f8f5129baca48e57920892f2523736f1d1bf48b0735a1ba988f","metho'
    b'd":null,"path":null,"port":null,"prev":"3548212734547f71405a4e8e5f7d7b63596d212fed63a7a'
    b'beb7dcea80c095359","reason":null,"redactions":0,"replica":"r1","scheme":null,"secrets":'
    b'[],"seq":1,"status":200,"task":null,"ts":"2026-12-07T12:00:00.000Z","withheld":false}\n'
)


@pytest.fixture
def fixed_key(tmp_path: Path) -> Path:
    key_path = tmp_path / "audit.key"
    key_path.write_bytes(bytes(range(32)))
    os.chmod(key_path, 0o600)
    return key_path


def _request_draft() -> RecordDraft:
    return RecordDraft.of(
        "request", decision="allow", reason="injected", grant="g_1", agent="bot", task="t\u2028",
        secrets={"b", "a"}, method="GET", scheme="https", host="api.example.com", port=443,
        path="/v1/x?token=1", fingerprints=("a:1",), duration_ms=1.5)


def _response_draft() -> RecordDraft:
    return RecordDraft.of("response", decision="allow", status=200, withheld=False,
                          redactions=0)


def test_records_are_byte_for_byte_what_the_writer_always_wrote(
        tmp_path: Path, fixed_key: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chain_file, "now_rfc3339", lambda: "2026-12-07T12:00:00.000Z")
    log_path = tmp_path / "audit.log"
    with AuditLog.open(log_path, fixed_key, fsync="always") as log:
        log.stamp_records(replica="r1")
        first = log.append(
            "request", decision="allow", reason="injected", grant="g_1", agent="bot",
            task="t\u2028", secrets={"b", "a"}, method="GET", scheme="https",
            host="api.example.com", port=443, path="/v1/x?token=1", fingerprints=("a:1",),
            duration_ms=1.5)
        log.append("response", decision="allow", status=200, withheld=False, redactions=0)
    assert log_path.read_bytes() == GOLDEN
    assert first["path"] == "/v1/x" and first["seq"] == 0


def test_records_appended_together_are_the_same_bytes_as_one_by_one(
        tmp_path: Path, fixed_key: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chain_file, "now_rfc3339", lambda: "2026-12-07T12:00:00.000Z")
    log_path = tmp_path / "audit.log"
    counts: list[int] = []
    with AuditLog.open(log_path, fixed_key, fsync="always") as log:
        log.stamp_records(replica="r1")
        log.add_observer(counts.append)
        written = log.append_records([_request_draft(), _response_draft()], durable=True)
    assert log_path.read_bytes() == GOLDEN
    assert [record["seq"] for record in written] == [0, 1]
    assert [record["event"] for record in written] == ["request", "response"]
    assert counts == [2]  # one write, one observer call for both records
    assert all(record_problem(record) is None for record in written)


def test_records_appended_together_stay_next_to_each_other_under_concurrent_writers(
        tmp_path: Path) -> None:
    log_path, key_path = tmp_path / "audit.log", tmp_path / "audit.key"
    with AuditLog.open(log_path, key_path) as log:
        def pairs(worker: int) -> None:
            for index in range(50):
                seqs = [r["seq"] for r in log.append_records([
                    RecordDraft.of("request", grant=f"g{worker}", path=f"/{index}"),
                    RecordDraft.of("response", grant=f"g{worker}", path=f"/{index}"),
                ])]
                log.ensure_durable(seqs[-1])
                assert seqs[1] == seqs[0] + 1
        threads = [threading.Thread(target=pairs, args=(worker,)) for worker in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    result = verify_chain(log_path, key_path)
    assert result.ok, result.message
    assert result.records == 400
    records = [json.loads(line) for line in log_path.read_bytes().splitlines()]
    for request, response in zip(records[::2], records[1::2], strict=True):
        assert (request["event"], response["event"]) == ("request", "response")
        assert (request["grant"], request["path"]) == (response["grant"], response["path"])


def test_a_draft_is_checked_when_made_and_cannot_change_after(tmp_path: Path) -> None:
    with pytest.raises(AuditRecordError, match="set by the log itself"):
        RecordDraft.of("request", seq=4)
    with pytest.raises(AuditRecordError, match="non-empty string"):
        RecordDraft.of("")
    draft = RecordDraft.of("request", path="/a?secret=1", task="x" * 5000)
    assert draft.fields["path"] == "/a" and len(str(draft.fields["task"])) == 1024
    with pytest.raises(dataclasses.FrozenInstanceError):
        draft.fields = {}  # type: ignore[misc]
    with pytest.raises(TypeError):
        draft.fields["path"] = "/b"  # type: ignore[index]
    with AuditLog.open(tmp_path / "audit.log", tmp_path / "audit.key") as log:
        with pytest.raises(ValueError, match="at least one record"):
            log.append_records([])
        written = log.append_records([draft])
    written[0]["path"] = "/changed"  # the caller's copy, not the draft
    assert draft.fields["path"] == "/a"


def test_records_appended_together_after_a_torn_line_come_back_without_its_note(
        tmp_path: Path) -> None:
    log_path, key_path = tmp_path / "audit.log", tmp_path / "audit.key"
    with AuditLog.open(log_path, key_path) as log:
        log.append("proxy_started")
        with open(log_path, "ab") as handle:  # another writer died mid-line
            handle.write(b'{"seq": 1, "tor')
        counts: list[int] = []
        log.add_observer(counts.append)
        written = log.append_records([RecordDraft.of("request", grant="g"),
                                      RecordDraft.of("response", grant="g")])
    assert [record["event"] for record in written] == ["request", "response"]
    assert [record["seq"] for record in written] == [2, 3]  # seq 1 is the torn line's note
    assert counts == [3]
    events = [json.loads(line)["event"] for line in log_path.read_bytes().splitlines()
              if line.startswith(b'{"agent"')]
    assert events == ["proxy_started", "audit_torn_tail", "request", "response"]
    result = verify_chain(log_path, key_path)
    assert result.ok and result.recovered, result.message
