"""The head state alone (no proxy): what a start refuses, what it accepts, what recover writes
and what verify then accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker_proxy.audit.errors import AuditTamperedError, AuditWriteError
from broker_proxy.audit.head import head_path, read_head
from broker_proxy.audit.key_file import load_key
from broker_proxy.audit.log import AuditLog, seal
from broker_proxy.audit.recover import recover_log
from broker_proxy.audit.verify import verify_chain


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "audit.log", tmp_path / "audit.key"


def write(log_path: Path, key_path: Path, count: int) -> None:
    with AuditLog.open(log_path, key_path) as log:
        for index in range(count):
            log.append("request", decision="allow", reason="ok", grant=f"g{index}")


def records(log_path: Path) -> list[dict]:
    return list(AuditLog.read_records(log_path))


def test_a_clean_close_leaves_the_head_at_the_last_record(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    write(log_path, key_path, 5)
    head = read_head(head_path(log_path), load_key(key_path, create=False))
    assert head is not None
    assert (head.count, head.size) == (5, log_path.stat().st_size)


def test_a_same_size_rewrite_of_the_last_record_is_refused_and_recovered_as_differs(
        paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    write(log_path, key_path, 4)
    key = load_key(key_path, create=False)
    lines = log_path.read_bytes().splitlines()
    last = json.loads(lines[-1])
    last["grant"] = "gX"  # same length, same chain position, valid MAC: only the head knows
    forged = seal(key, {k: v for k, v in last.items() if k != "mac"})
    log_path.write_bytes(b"\n".join([*lines[:-1], forged]) + b"\n")
    assert verify_chain(log_path, key_path).ok  # the chain alone cannot tell
    with pytest.raises(AuditTamperedError, match="audit recover"):
        AuditLog.open(log_path, key_path)
    recovery = recover_log(log_path, key_path)
    assert recovery.record is not None and recovery.record["reason"] == "differs"
    result = verify_chain(log_path, key_path)
    assert result.ok and len(result.gaps) == 1
    write(log_path, key_path, 1)  # the log opens again


def test_a_seq_jump_anywhere_but_an_audit_gap_record_fails_verify(
        paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    write(log_path, key_path, 3)
    key = load_key(key_path, create=False)
    lines = log_path.read_bytes().splitlines()
    from broker_proxy.audit.log import line_hash
    jump = seal(key, {**{k: v for k, v in json.loads(lines[-1]).items() if k != "mac"},
                      "seq": 9, "prev": line_hash(lines[-1]), "gap_from_seq": 3})
    log_path.write_bytes(log_path.read_bytes() + jump + b"\n")
    result = verify_chain(log_path, key_path)
    assert not result.ok and "seq is not 3" in result.message


def test_a_torn_line_after_the_head_is_a_crash_not_a_gap(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    write(log_path, key_path, 3)
    with open(log_path, "ab") as handle:
        handle.write(b'{"agent":null,"dec')
    with AuditLog.open(log_path, key_path) as log:
        log.append("request")
    assert [r["event"] for r in records(log_path)][-2:] == ["audit_torn_tail", "request"]
    assert verify_chain(log_path, key_path).ok


def test_a_torn_head_slot_leaves_the_other_one(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    write(log_path, key_path, 2)
    write(log_path, key_path, 2)  # a second update: both slots used
    key = load_key(key_path, create=False)
    head_file = head_path(log_path)
    newest = read_head(head_file, key)
    assert newest is not None and newest.count == 4
    data = bytearray(head_file.read_bytes())
    slot = (newest.gen % 2) * 1024
    data[slot:slot + 10] = b"\0" * 10  # a crash in the middle of writing the newest slot
    head_file.write_bytes(bytes(data))
    older = read_head(head_file, key)
    assert older is not None and older.count < 4
    write(log_path, key_path, 1)  # the log holds more than the older head: a continuation


def test_an_edited_head_is_refused_not_ignored(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    write(log_path, key_path, 2)
    head_path(log_path).write_bytes(b'{"v":1,"count":1}'.ljust(2048, b"\0"))
    with pytest.raises(AuditWriteError, match=r"head state .* does not verify"):
        AuditLog.open(log_path, key_path)
