"""The audit log is append-only, chained and MAC'd; verify names the first record that breaks."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from broker_proxy.audit import (
    AuditKeyError,
    AuditLog,
    AuditRecordError,
    AuditWriteError,
    verify_chain,
)
from broker_proxy.audit.head import head_path
from broker_proxy.audit.log import GENESIS_PREV, MAX_STRING, TORN_TAIL_EVENT, line_hash


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "audit.log", tmp_path / "audit.key"


def write_records(log_path: Path, key_path: Path, count: int, **open_kw: str) -> None:
    with AuditLog.open(log_path, key_path, **open_kw) as log:
        for index in range(count):
            log.append(
                "request",
                decision="allow",
                reason="ok",
                grant=f"g{index}",
                secrets=["github"],
                method="GET",
                scheme="https",
                host="api.github.com",
                port=443,
                path=f"/repos/{index}",
                status=200,
                duration_ms=1.5,
            )


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def test_hundred_records_verify(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    write_records(log_path, key_path, 100)
    result = verify_chain(log_path, key_path)
    assert result.ok, result.message
    assert result.records == 100
    assert result.first_bad is None


def test_records_chain_from_zeros_and_carry_every_design_field(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    write_records(log_path, key_path, 2)
    first, second = (json.loads(line) for line in lines_of(log_path))
    assert first["prev"] == GENESIS_PREV
    assert second["prev"] == line_hash(lines_of(log_path)[0])
    assert (first["seq"], second["seq"]) == (0, 1)
    design_fields = {
        "seq", "ts", "event", "decision", "reason", "grant", "agent", "task", "secrets",
        "method", "scheme", "host", "port", "path", "status", "duration_ms", "prev", "mac",
    }  # fmt: skip
    assert design_fields <= first.keys()
    assert first["ts"].endswith("Z") and len(first["ts"]) == len("2024-01-01T00:00:00.000Z")


def test_lines_are_canonical_json(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    write_records(log_path, key_path, 3)
    for line in lines_of(log_path):
        record = json.loads(line)
        assert line == json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def test_query_string_is_never_recorded(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    token = secrets.token_urlsafe(24)
    with AuditLog.open(log_path, key_path) as log:
        record = log.append("request", path=f"/search?key={token}&q=1#frag")
    assert record["path"] == "/search"
    assert token.encode() not in log_path.read_bytes()


def test_control_characters_are_escaped_and_long_strings_capped(
    paths: tuple[Path, Path],
) -> None:
    log_path, key_path = paths
    with AuditLog.open(log_path, key_path) as log:
        log.append(
            "request",
            task="line1\nfake record\r\x1b[31m\x9b2J\u2028end",
            message="x" * 5000,
        )
    raw = log_path.read_bytes()
    assert raw.count(b"\n") == 1
    assert b"\x1b" not in raw and b"\r" not in raw
    assert all(byte < 0x80 for byte in raw)  # C1 and U+2028 escaped too
    record = json.loads(raw)
    assert record["task"].startswith("line1\nfake record")
    assert len(record["message"]) == MAX_STRING
    assert record["message"].endswith("…[truncated]")
    assert verify_chain(log_path, key_path).ok


def test_unsupported_field_values_are_refused(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    with AuditLog.open(log_path, key_path) as log:
        with pytest.raises(AuditRecordError, match="'extra'"):
            log.append("request", extra={"nested": "dict"})
        with pytest.raises(AuditRecordError, match="list of strings"):
            log.append("request", secrets=["a", 1])
        with pytest.raises(AuditRecordError, match="set by the log"):
            log.append("request", seq=7)
        with pytest.raises(AuditRecordError, match="finite"):
            log.append("request", duration_ms=float("nan"))
        log.append("request", fingerprints=["ab", "cd"], by="alice")
    assert verify_chain(log_path, key_path).ok


def test_modified_field_is_named_by_line(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    write_records(log_path, key_path, 100)
    lines = lines_of(log_path)
    record = json.loads(lines[49])
    record["decision"] = "block"
    lines[49] = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    log_path.write_bytes(b"\n".join(lines) + b"\n")
    result = verify_chain(log_path, key_path)
    assert not result.ok
    assert result.first_bad == (50, 49, "mac does not verify")
    assert result.message == f"{log_path}:50: seq 49: mac does not verify"
    assert result.records == 49


def test_deleted_line_is_detected(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    write_records(log_path, key_path, 100)
    lines = lines_of(log_path)
    del lines[49]
    log_path.write_bytes(b"\n".join(lines) + b"\n")
    result = verify_chain(log_path, key_path)
    assert not result.ok
    assert result.first_bad is not None and result.first_bad[0] == 50


def test_swapped_lines_are_detected(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    write_records(log_path, key_path, 100)
    lines = lines_of(log_path)
    lines[49], lines[50] = lines[50], lines[49]
    log_path.write_bytes(b"\n".join(lines) + b"\n")
    result = verify_chain(log_path, key_path)
    assert not result.ok
    assert result.first_bad is not None and result.first_bad[0] == 50


def test_prev_mismatch_is_reported_even_with_a_valid_mac(paths: tuple[Path, Path]) -> None:
    # Two logs with one key: a record from the other log MACs fine but does not chain.
    log_path, key_path = paths
    other = log_path.with_name("other.log")
    write_records(log_path, key_path, 5)
    with AuditLog.open(other, key_path) as log:
        for _ in range(3):
            log.append("other")
    lines = lines_of(log_path)
    lines[2] = lines_of(other)[2]
    log_path.write_bytes(b"\n".join(lines) + b"\n")
    result = verify_chain(log_path, key_path)
    assert result.first_bad == (3, 2, "prev does not match the previous record")


def test_truncation_mid_line_fails_verify(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    write_records(log_path, key_path, 10)
    data = log_path.read_bytes()
    log_path.write_bytes(data[: len(data) - 40])
    result = verify_chain(log_path, key_path)
    assert not result.ok
    assert result.first_bad == (10, None, "last line is torn (no trailing newline)")


def test_wrong_key_fails_on_the_first_record(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    write_records(log_path, key_path, 5)
    other_key = key_path.with_name("other.key")
    fd = os.open(other_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, secrets.token_bytes(32))
    os.close(fd)
    result = verify_chain(log_path, other_key)
    assert result.first_bad == (1, 0, "mac does not verify")


def test_torn_tail_is_kept_and_recovered_from(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    write_records(log_path, key_path, 10)
    data = log_path.read_bytes()
    torn = data[: len(data) - 40]
    log_path.write_bytes(torn)
    # A crash mid-write: the head state never named the record being written. (A head that
    # names it makes this a cut of a completed record, refused: test_audit_head.py.)
    head_path(log_path).unlink()
    torn_piece = torn[torn.rfind(b"\n") + 1 :]
    with AuditLog.open(log_path, key_path) as log:
        record = log.append("request", decision="allow")
    raw = log_path.read_bytes()
    assert raw.startswith(torn + b"\n")  # the evidence is still there
    lines = raw.splitlines()
    recovery = json.loads(lines[10])
    assert recovery["event"] == TORN_TAIL_EVENT
    assert recovery["torn_sha256"] == line_hash(torn_piece)
    assert recovery["seq"] == 9 and recovery["prev"] == line_hash(lines[8])
    assert record["seq"] == 10
    result = verify_chain(log_path, key_path)
    assert result.ok, result.message
    assert result.recovered == (10,)


def test_garbage_line_without_recovery_record_fails(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    write_records(log_path, key_path, 5)
    lines = lines_of(log_path)
    lines.insert(2, b'{"seq": 99, "event": "forged"')
    log_path.write_bytes(b"\n".join(lines) + b"\n")
    result = verify_chain(log_path, key_path)
    assert result.first_bad == (3, None, "line is not a valid record")


def test_non_canonical_line_fails(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    write_records(log_path, key_path, 3)
    lines = lines_of(log_path)
    lines[1] = json.dumps(json.loads(lines[1]), sort_keys=True).encode()  # default spacing
    log_path.write_bytes(b"\n".join(lines) + b"\n")
    result = verify_chain(log_path, key_path)
    assert result.first_bad == (2, 1, "line is not in canonical form")


def test_two_writers_interleaved_keep_one_chain(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    first = AuditLog.open(log_path, key_path)
    second = AuditLog.open(log_path, key_path)
    for index in range(30):
        (first if index % 3 else second).append("request", grant=f"g{index}")
    first.close()
    second.close()
    result = verify_chain(log_path, key_path)
    assert result.ok, result.message
    assert result.records == 30


def test_concurrent_threads_and_writers_keep_one_chain(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    writers = [AuditLog.open(log_path, key_path, fsync="batch") for _ in range(2)]

    def run(log: AuditLog, start: int) -> None:
        for index in range(start, start + 50):
            log.append("request", grant=f"g{index}", durable=index % 10 == 0)

    threads = [
        threading.Thread(target=run, args=(writers[n % 2], n * 50)) for n in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for log in writers:
        log.close()
    result = verify_chain(log_path, key_path)
    assert result.ok, result.message
    assert result.records == 300
    seqs = [record["seq"] for record in AuditLog.read_records(log_path)]
    assert seqs == list(range(300))


def test_reopen_continues_the_chain(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    write_records(log_path, key_path, 3, fsync="always")
    write_records(log_path, key_path, 3, fsync="always")
    result = verify_chain(log_path, key_path)
    assert result.ok and result.records == 6


def test_key_is_created_private_and_exactly_32_bytes(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    AuditLog.open(log_path, key_path).close()
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600
    assert len(key_path.read_bytes()) == 32
    before = key_path.read_bytes()
    AuditLog.open(log_path, key_path).close()
    assert key_path.read_bytes() == before


def test_group_readable_key_is_refused(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    AuditLog.open(log_path, key_path).close()
    key_path.chmod(0o640)
    with pytest.raises(AuditKeyError, match="accessible by group or others"):
        AuditLog.open(log_path, key_path)
    with pytest.raises(AuditKeyError, match="accessible by group or others"):
        verify_chain(log_path, key_path)


def test_verify_does_not_create_a_missing_key(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    log_path.write_bytes(b"")
    with pytest.raises(AuditKeyError, match="does not exist"):
        verify_chain(log_path, key_path)
    assert not key_path.exists()


def test_disk_full_raises_audit_write_error(tmp_path: Path) -> None:
    log = AuditLog.open(Path("/dev/full"), tmp_path / "audit.key")
    with pytest.raises(AuditWriteError) as info:
        log.append("request", durable=True)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("cannot write audit log /dev/full:")
    with contextlib.suppress(AuditWriteError):
        log.close()


def test_log_in_removed_directory_raises_audit_write_error(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    shutil.rmtree(gone)
    with pytest.raises(AuditWriteError, match="cannot open audit log"):
        AuditLog.open(gone / "audit.log", tmp_path / "audit.key")


def test_append_after_close_raises(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    log = AuditLog.open(log_path, key_path)
    log.close()
    with pytest.raises(AuditWriteError, match="is closed"):
        log.append("request")


def test_secret_value_never_reaches_the_log_through_the_path(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    secret_value = secrets.token_urlsafe(32)
    with AuditLog.open(log_path, key_path, fsync="always") as log:
        log.append("request", path=f"/x?access_token={secret_value}", secrets=["github"])
    assert secret_value.encode() not in log_path.read_bytes()


def test_read_records_skips_torn_last_line(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    write_records(log_path, key_path, 4)
    with log_path.open("ab") as handle:
        handle.write(b'{"seq":4,"ev')
    assert [record["seq"] for record in AuditLog.read_records(log_path)] == [0, 1, 2, 3]


def test_separate_processes_appending_keep_one_chain(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    AuditLog.open(log_path, key_path).close()  # create the key once, before the race
    script = (
        "import sys; from pathlib import Path; from broker_proxy.audit import AuditLog\n"
        "log = AuditLog.open(Path(sys.argv[1]), Path(sys.argv[2]))\n"
        "for i in range(100): log.append('request', grant=sys.argv[3] + str(i))\n"
        "log.close()\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(log_path), str(key_path), f"p{n}-"])
        for n in range(3)
    ]
    assert [proc.wait(timeout=60) for proc in procs] == [0, 0, 0]
    result = verify_chain(log_path, key_path)
    assert result.ok, result.message
    assert result.records == 300


def test_whole_record_missing_only_its_newline_is_ended_not_treated_as_torn(
    paths: tuple[Path, Path],
) -> None:
    log_path, key_path = paths
    write_records(log_path, key_path, 3)
    log_path.write_bytes(log_path.read_bytes()[:-1])
    with AuditLog.open(log_path, key_path) as log:
        record = log.append("request")
    assert record["seq"] == 3
    result = verify_chain(log_path, key_path)
    assert result.ok and result.records == 4 and result.recovered == ()


def test_log_ending_in_a_whole_line_that_is_not_a_record_refuses_to_open(
    paths: tuple[Path, Path],
) -> None:
    # Continuing after it would bury the damage; the operator has to look (audit verify).
    log_path, key_path = paths
    write_records(log_path, key_path, 2)
    with log_path.open("ab") as handle:
        handle.write(b"not a record\n")
    # Against its head state the line is also not the chain's continuation: either says so.
    with pytest.raises(AuditWriteError,
                       match=r"ends with a line that is not a record|do not continue the chain"):
        AuditLog.open(log_path, key_path)


def _truncate_to_nothing(log_path: Path) -> None:
    os.truncate(log_path, 0)


def _replace_with_an_empty_file(log_path: Path) -> None:
    spare = log_path.with_name("spare")
    spare.write_bytes(b"")
    os.replace(spare, log_path)


def _replace_with_its_first_ten_lines(log_path: Path) -> None:
    spare = log_path.with_name("spare")
    spare.write_bytes(b"".join(line + b"\n" for line in lines_of(log_path)[:10]))
    os.replace(spare, log_path)


def _cut_in_place_to_its_first_ten_lines(log_path: Path) -> None:
    head = b"".join(line + b"\n" for line in lines_of(log_path)[:10])
    with open(log_path, "r+b") as handle:
        handle.truncate(0)
        handle.write(head)


def _rewrite_in_place_with_the_same_size(log_path: Path) -> None:
    data = bytearray(log_path.read_bytes())
    data[-30] = ord("0") if data[-30] != ord("0") else ord("1")
    log_path.write_bytes(bytes(data))


@pytest.mark.parametrize("tamper", [
    _truncate_to_nothing, _replace_with_an_empty_file, _replace_with_its_first_ten_lines,
    _cut_in_place_to_its_first_ten_lines, _rewrite_in_place_with_the_same_size,
])
def test_running_writer_refuses_a_log_it_did_not_write(
        paths: tuple[Path, Path], tamper, caplog: pytest.LogCaptureFixture) -> None:
    from broker_proxy.audit.log import AuditTamperedError

    log_path, key_path = paths
    with AuditLog.open(log_path, key_path) as log:
        for index in range(20):
            log.append("request", grant=f"g{index}")
        tamper(log_path)
        with pytest.raises(AuditTamperedError):
            log.append("request", grant="after")
        assert log.problem() is not None
        # It sticks: the operator acts, not the next request.
        with pytest.raises(AuditTamperedError):
            log.append("request", grant="again")
    assert b'"after"' not in log_path.read_bytes()
    assert "refusing to write" in caplog.text


def test_another_writer_appending_is_not_mistaken_for_tampering(
        paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    with AuditLog.open(log_path, key_path) as first, AuditLog.open(log_path, key_path) as other:
        for index in range(5):
            first.append("request", grant=f"a{index}")
            other.append("request", grant=f"b{index}")
        assert first.problem() is None and other.problem() is None
    assert verify_chain(log_path, key_path).ok


def test_a_hard_linked_archive_and_a_forged_rotation_record_are_not_a_rotation(
        paths: tuple[Path, Path]) -> None:
    from broker_proxy.audit.log import ROTATED_EVENT, AuditTamperedError

    log_path, key_path = paths
    with AuditLog.open(log_path, key_path) as log:
        for index in range(5):
            log.append("request", grant=f"g{index}")
        last = lines_of(log_path)[-1]
        os.link(log_path, log_path.with_name("audit.log.000001"))
        forged = {"seq": 5, "event": ROTATED_EVENT, "prev": line_hash(last), "mac": "0" * 64}
        spare = log_path.with_name("spare")
        spare.write_bytes(json.dumps(forged).encode() + b"\n")
        os.replace(spare, log_path)
        with pytest.raises(AuditTamperedError):
            log.append("request", grant="after")


def test_verify_refuses_a_last_line_whose_mac_member_was_moved(tmp_path) -> None:
    """Same object, other bytes: the fast MAC check must not accept what the writer never wrote."""
    from broker_proxy.audit.verify import verify_chain

    log_path, key_path = tmp_path / "audit.log", tmp_path / "audit.key"
    with AuditLog.open(log_path, key_path) as log:
        log.append("request", grant="g_1")
        log.append("request", grant="g_2")
    lines = log_path.read_bytes().splitlines()
    last = lines[-1]
    start = last.index(b',"mac":"')
    member = last[start:start + len(b',"mac":"') + 64 + 1]
    moved = last.replace(member, b"")[:-1] + member + b"}"
    assert json.loads(moved) == json.loads(last)
    log_path.write_bytes(b"\n".join([*lines[:-1], moved]) + b"\n")
    result = verify_chain(log_path, key_path)
    assert not result.ok and result.first_bad[2] == "line is not in canonical form"
