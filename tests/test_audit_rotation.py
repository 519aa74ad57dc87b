"""Rotation keeps one chain across files; verify names file, line and seq of the first break;
a replaced or removed log fails closed; checkpoints catch a cut tail; fingerprints are HMACs."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from broker_proxy.audit import AuditLog, AuditWriteError, verify_chain
from broker_proxy.audit.checkpoint import (
    CheckpointPaths,
    CheckpointWriter,
    load_signing_key,
    verify_checkpoints,
    write_checkpoint,
)
from broker_proxy.audit.files import archives_of, chain_files
from broker_proxy.audit.log import ROTATED_EVENT, line_hash
from broker_proxy.audit.verify import verify_path
from broker_proxy.devtools import prefork

MAX_BYTES = 4096


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "audit.log", tmp_path / "audit.key"


def fill(log: AuditLog, count: int, grant: str = "g") -> None:
    for index in range(count):
        log.append("request", decision="allow", reason="injected", grant=f"{grant}{index}",
                   secrets=["github"], method="GET", scheme="https", host="api.github.com",
                   port=443, path=f"/repos/{index}", status=None)


def rotated_log(log_path: Path, key_path: Path, count: int = 120) -> list[Path]:
    with AuditLog.open(log_path, key_path) as log:
        log.rotate_at(MAX_BYTES)
        fill(log, count)
    files = chain_files(log_path)
    assert len(files) >= 4, "the test needs several rotated files"
    return files


def rewrite(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def test_rotated_chain_verifies_across_files(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    files = rotated_log(*paths)
    assert files[-1] == log_path and files[0].name == "audit.log.000001"
    assert all(f.stat().st_size < MAX_BYTES + 1024 for f in files)
    result = verify_chain(log_path, key_path)
    assert result.ok, result.message
    assert result.records == 120 + len(files) - 1  # one audit_rotated record per new file
    assert f"in {len(files)} files" in result.message


def test_new_file_starts_with_the_previous_file_s_last_hash(paths: tuple[Path, Path]) -> None:
    _log_path, _key = paths
    files = rotated_log(*paths)
    for older, newer in itertools.pairwise(files):
        last = older.read_bytes().splitlines()[-1]
        first = json.loads(newer.read_bytes().splitlines()[0])
        assert first["event"] == ROTATED_EVENT
        assert first["prev"] == line_hash(last)
        assert first["seq"] == json.loads(last)["seq"] + 1
        assert first["previous_file"] == older.name


def test_edited_record_in_an_archive_is_named_by_file_line_and_seq(
        paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    files = rotated_log(*paths)
    lines = files[1].read_bytes().splitlines()
    record = json.loads(lines[3])
    record["host"] = "evil.example"
    lines[3] = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    rewrite(files[1], lines)
    result = verify_chain(log_path, key_path)
    assert not result.ok
    assert result.path == str(files[1])
    assert result.first_bad == (4, record["seq"], "mac does not verify")
    assert result.message == f"{files[1]}:4: seq {record['seq']}: mac does not verify"


def test_deleted_record_in_an_archive_is_named(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    files = rotated_log(*paths)
    lines = files[1].read_bytes().splitlines()
    gone = json.loads(lines[5])["seq"]
    del lines[5]
    rewrite(files[1], lines)
    result = verify_chain(log_path, key_path)
    assert result.path == str(files[1])
    assert result.first_bad == (6, gone + 1, f"seq is not {gone} (records missing or reordered)")


def test_reordered_records_are_named(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    files = rotated_log(*paths)
    lines = files[2].read_bytes().splitlines()
    lines[2], lines[3] = lines[3], lines[2]
    rewrite(files[2], lines)
    moved = json.loads(lines[2])["seq"]
    result = verify_chain(log_path, key_path)
    assert result.path == str(files[2])
    assert result.first_bad == (3, moved, f"seq is not {moved - 1} (records missing or reordered)")


def test_swapped_archive_files_are_detected(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    files = rotated_log(*paths)
    first, second = files[0].read_bytes(), files[1].read_bytes()
    files[0].write_bytes(second)
    files[1].write_bytes(first)
    result = verify_chain(log_path, key_path)
    assert result.path == str(files[0])
    assert result.first_bad is not None and result.first_bad[:1] == (1,)
    assert "seq is not 0" in result.first_bad[2]


def test_a_removed_archive_is_named_at_the_next_file_s_first_line(
        paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    files = rotated_log(*paths)
    expected = json.loads(files[1].read_bytes().splitlines()[0])["seq"]
    after = json.loads(files[2].read_bytes().splitlines()[0])["seq"]
    files[1].unlink()
    result = verify_chain(log_path, key_path)
    assert result.path == str(files[2])
    assert result.first_bad == (1, after, f"seq is not {expected} (records missing or reordered)")


def test_records_cut_from_the_end_of_an_archive_are_detected(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    files = rotated_log(*paths)
    lines = files[0].read_bytes().splitlines()
    rewrite(files[0], lines[:-2])  # a cut at a line boundary
    result = verify_chain(log_path, key_path)
    assert result.path == str(files[1]) and result.first_bad is not None
    assert result.first_bad[0] == 1


def test_torn_archive_line_is_named(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    files = rotated_log(*paths)
    data = files[0].read_bytes()
    files[0].write_bytes(data[:-30])
    result = verify_chain(log_path, key_path)
    assert result.path == str(files[0])
    assert result.first_bad is not None
    assert result.first_bad[2] == "last line is torn (no trailing newline)"


def test_rotation_cut_short_by_a_crash_is_undone_on_open(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    files = rotated_log(*paths)
    # The crash came after link() and before rename(): the next archive is the live file.
    half = log_path.with_name(f"audit.log.{len(files):06d}")
    os.link(log_path, half)
    assert verify_chain(log_path, key_path).ok  # verify skips the duplicate name
    with AuditLog.open(log_path, key_path) as log:
        fill(log, 1)
    assert not half.exists()
    assert verify_chain(log_path, key_path).ok


def test_writers_in_several_processes_rotate_into_one_chain(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    AuditLog.open(log_path, key_path).close()
    script = (
        "import sys; from pathlib import Path; from broker_proxy.audit import AuditLog\n"
        "log = AuditLog.open(Path(sys.argv[1]), Path(sys.argv[2]))\n"
        "log.rotate_at(4096)\n"
        "for i in range(150): log.append('request', grant=sys.argv[3] + str(i))\n"
        "log.close()\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(log_path), str(key_path),
                               f"p{n}-"]) for n in range(3)]
    assert [proc.wait(timeout=60) for proc in procs] == [0, 0, 0]
    result = verify_chain(log_path, key_path)
    assert result.ok, result.message
    records = [r for f in chain_files(log_path) for r in AuditLog.read_records(f)]
    grants = [r["grant"] for r in records if r["event"] == "request"]
    assert len(grants) == 450 and len(set(grants)) == 450
    assert len(archives_of(log_path)) >= 5


def test_log_replaced_by_a_directory_fails_every_append(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    with AuditLog.open(log_path, key_path) as log:
        fill(log, 2)
        log_path.unlink()
        log_path.mkdir()
        for _ in range(2):
            with pytest.raises(AuditWriteError, match="cannot write audit log"):
                log.append("request", durable=True)
        log_path.rmdir()
        # Gone for good: the name is not re-created (a new chain from 0 would hide the old).
        with pytest.raises(AuditWriteError, match="No such file"):
            log.append("request", durable=True)
    assert not log_path.exists()


def test_log_moved_away_is_not_silently_recreated_on_open(paths: tuple[Path, Path]) -> None:
    log_path, key_path = paths
    files = rotated_log(*paths)
    log_path.rename(log_path.with_name("elsewhere"))
    with pytest.raises(AuditWriteError, match="missing but its rotated files exist"):
        AuditLog.open(log_path, key_path)
    assert chain_files(log_path) == files[:-1]


def test_directory_of_chains_verifies_each_and_names_the_bad_one(tmp_path: Path) -> None:
    key_path = tmp_path / "audit.key"
    logs = tmp_path / "logs"
    logs.mkdir()
    for replica in ("replica-a.log", "replica-b.log"):
        with AuditLog.open(logs / replica, key_path) as log:
            log.rotate_at(MAX_BYTES)
            fill(log, 60)
    results = verify_path(logs, key_path)
    assert [r.ok for r in results] == [True, True]
    bad = logs / "replica-b.log.000001"
    lines = bad.read_bytes().splitlines()
    lines[0] = lines[0].replace(b'"decision":"allow"', b'"decision":"deny"')
    rewrite(bad, lines)
    results = verify_path(logs, key_path)
    assert [r.ok for r in results] == [True, False]
    assert results[1].message == f"{bad}:1: seq 0: mac does not verify"


def test_fingerprint_is_an_hmac_under_the_audit_key_not_a_plain_hash(
        paths: tuple[Path, Path], tmp_path: Path) -> None:
    log_path, key_path = paths
    value = secrets.token_urlsafe(24)
    with AuditLog.open(log_path, key_path) as log, \
            AuditLog.open(tmp_path / "other.log", tmp_path / "other.key") as other:
        fingerprint = log.fingerprint(value)
        assert fingerprint == log.fingerprint(value)
        assert fingerprint != log.fingerprint(value + "x")
        assert fingerprint != other.fingerprint(value)  # depends on the key
        for digest in (hashlib.sha256, hashlib.sha1, hashlib.md5):
            assert fingerprint not in digest(value.encode()).hexdigest()


def test_checkpoints_verify_and_catch_a_tail_cut_at_a_line_boundary(tmp_path: Path) -> None:
    log_path, key_path = tmp_path / "audit.log", tmp_path / "audit.key"
    cp = CheckpointPaths.in_home(tmp_path)
    key = load_signing_key(cp, create=True)
    assert oct(cp.key.stat().st_mode & 0o777) == "0o600"
    with AuditLog.open(log_path, key_path) as log:
        fill(log, 10)
        first = write_checkpoint(log, key, cp.file)
        fill(log, 5)
        write_checkpoint(log, key, cp.file)
    assert first is not None and first["count"] == 10
    assert verify_checkpoints(log_path, key_path, cp.file, cp.public) == (2, None)
    lines = log_path.read_bytes().splitlines()
    rewrite(log_path, lines[:12])  # the chain alone still verifies
    assert verify_chain(log_path, key_path).ok
    _held, problem = verify_checkpoints(log_path, key_path, cp.file, cp.public)
    assert problem == (f"{cp.file}:2: the log has 12 records but this checkpoint counts 15 "
                       "(records were removed from the end)")


def test_forged_checkpoint_is_refused(tmp_path: Path) -> None:
    log_path, key_path = tmp_path / "audit.log", tmp_path / "audit.key"
    cp = CheckpointPaths.in_home(tmp_path)
    key = load_signing_key(cp, create=True)
    with AuditLog.open(log_path, key_path) as log:
        fill(log, 3)
        write_checkpoint(log, key, cp.file)
    checkpoint = json.loads(cp.file.read_bytes())
    checkpoint["count"] = 2
    cp.file.write_text(json.dumps(checkpoint) + "\n")
    _held, problem = verify_checkpoints(log_path, key_path, cp.file, cp.public)
    assert problem == f"{cp.file}:1: checkpoint signature does not verify"


def _holds_open(pid: int, path: Path) -> bool:
    with contextlib.suppress(OSError):
        return any(os.readlink(fd) == str(path) for fd in Path(f"/proc/{pid}/fd").iterdir())
    return False


def _wait_for(condition: Callable[[], bool], why: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, why
        time.sleep(0.05)


def test_tail_follow_for_one_grant_survives_rotation(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    log_path, key_path = home / "audit.log", home / "audit.key"
    with AuditLog.open(log_path, key_path) as log:
        log.append("proxy_started")
    follower = prefork.Popen(
        [sys.executable, "-m", "broker_proxy.cli", "--home", str(home), "audit", "tail",
         "--follow", "--grant", "g_watch", "--json", "-n", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(follower.stdout or ()), daemon=True)
    reader.start()
    try:
        # It follows once it holds the live log open (on a loaded machine, seconds after start).
        _wait_for(lambda: _holds_open(follower.pid, log_path), "the follower never opened the log")
        with AuditLog.open(log_path, key_path) as log:
            log.rotate_at(MAX_BYTES)
            for index in range(150):
                log.append("request", grant="g_watch" if index % 3 == 0 else "g_other",
                           path=f"/n/{index}", task="x" * 40)
        assert len(archives_of(log_path)) >= 3
        _wait_for(lambda: len(lines) >= 50, "the follower did not show every record")
        time.sleep(1.5)  # anything shown twice would be shown by now
    finally:
        follower.terminate()
        follower.wait(timeout=10)
        reader.join(timeout=10)
    shown = [json.loads(line) for line in lines]
    assert [r["path"] for r in shown] == [f"/n/{i}" for i in range(0, 150, 3)]
    assert {r["grant"] for r in shown} == {"g_watch"}


def test_cli_verify_names_file_line_and_seq_across_rotated_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    files = rotated_log(home / "audit.log", home / "audit.key")

    def verify(*extra: str) -> subprocess.CompletedProcess[str]:
        return prefork.run([sys.executable, "-m", "broker_proxy.cli", "--home", str(home),
                               "audit", "verify", *extra], capture_output=True, text=True,
                              timeout=60)

    done = verify()
    assert done.returncode == 0 and f"in {len(files)} files" in done.stdout
    checkpoint = prefork.run([sys.executable, "-m", "broker_proxy.cli", "--home", str(home),
                                 "audit", "checkpoint"], capture_output=True, text=True, timeout=60)
    assert checkpoint.returncode == 0, checkpoint.stderr
    assert "checkpoints: 1 signed" in verify().stdout
    lines = files[2].read_bytes().splitlines()
    seq = json.loads(lines[1])["seq"]
    lines[1] = lines[1].replace(b'"port":443', b'"port":444')
    rewrite(files[2], lines)
    done = verify()
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"broker-proxy: audit log does not verify: {files[2]}:2: seq {seq}: mac does not verify"]
    done = verify(str(home))  # a directory: every chain in it
    assert done.returncode != 0 and f"{files[2]}:2: seq {seq}" in done.stderr


def _cli(home: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return prefork.run([sys.executable, "-m", "broker_proxy.cli", "--home", str(home), *argv],
                          capture_output=True, text=True, timeout=60)


def test_checkpoint_binds_to_the_log_not_its_file_name(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with AuditLog.open(home / "audit.log", home / "audit.key") as log:
        fill(log, 30)
    assert _cli(home, "audit", "checkpoint").returncode == 0
    checkpoints = home / "audit.checkpoints"
    copy = tmp_path / "copy.log"
    copy.write_bytes(b"".join(line + b"\n" for line in
                              (home / "audit.log").read_bytes().splitlines()[:-3]))
    done = _cli(home, "audit", "verify", "--checkpoints", str(checkpoints), str(copy))
    assert done.returncode != 0
    assert "records were removed from the end" in done.stderr
    assert "ok" not in done.stdout
    whole = tmp_path / "whole.log"
    whole.write_bytes((home / "audit.log").read_bytes())
    done = _cli(home, "audit", "verify", "--checkpoints", str(checkpoints), str(whole))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "audit log ok"


def test_checkpoint_of_another_log_is_a_failure_not_a_skip(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with AuditLog.open(home / "audit.log", home / "audit.key") as log:
        fill(log, 5)
    assert _cli(home, "audit", "checkpoint").returncode == 0
    other = tmp_path / "other.log"
    with AuditLog.open(other, home / "audit.key") as log:
        fill(log, 8, grant="other")
    done = _cli(home, "audit", "verify", "--checkpoints", str(home / "audit.checkpoints"),
                str(other))
    assert done.returncode != 0
    assert "checkpoint is of another log" in done.stderr


def test_verify_of_a_directory_with_checkpoints_prints_no_ok_before_failing(
        tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with AuditLog.open(home / "audit.log", home / "audit.key") as log:
        fill(log, 5)
    assert _cli(home, "audit", "checkpoint").returncode == 0
    done = _cli(home, "audit", "verify", str(home), "--checkpoints",
                str(home / "audit.checkpoints"))
    assert done.returncode != 0 and done.stdout == ""


def test_a_checkpoint_goes_to_every_copy_and_the_copy_alone_catches_a_cut(tmp_path: Path) -> None:
    log_path, key_path = tmp_path / "audit.log", tmp_path / "audit.key"
    cp = CheckpointPaths.in_home(tmp_path)
    key = load_signing_key(cp, create=True)
    elsewhere = tmp_path / "elsewhere.checkpoints"
    with AuditLog.open(log_path, key_path) as log:
        fill(log, 10)
        write_checkpoint(log, key, cp.file, (elsewhere,))
    assert elsewhere.read_bytes() == cp.file.read_bytes()
    cp.file.unlink()  # whoever cut the log removed the checkpoints beside it too
    rewrite(log_path, log_path.read_bytes().splitlines()[:7])
    _held, problem = verify_checkpoints(log_path, key_path, elsewhere, cp.public)
    assert problem is not None and "records were removed from the end" in problem


def test_checkpoint_writer_also_writes_after_every_n_records(tmp_path: Path) -> None:
    cp = CheckpointPaths.in_home(tmp_path)
    key = load_signing_key(cp, create=True)
    with AuditLog.open(tmp_path / "audit.log", tmp_path / "audit.key") as log:
        writer = CheckpointWriter(log, key, cp.file, 3600, records=5).start()
        for _round in range(2):
            fill(log, 5)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and len(cp.file.read_bytes().splitlines()
                                                      if cp.file.exists() else []) <= _round:
                time.sleep(0.02)
        counts = [json.loads(line)["count"] for line in cp.file.read_bytes().splitlines()]
        writer.stop()
    assert counts == [5, 10]  # by count, long before the hour is up
