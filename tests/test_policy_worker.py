"""The policy reload's child process: its answer, and the watcher abandoning a stale load.

The reloader is driven directly against the decision tests' real broker, with the real child
process; a wrapper child that sleeps before answering stands in for a slow, huge policy, so
these tests take about a second instead of the minute a real one would.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import sys
import threading
import time
from pathlib import Path

import pytest

from broker_proxy.decision.active_policy import ActivePolicy
from broker_proxy.policy.loader import PolicyError, load_policy, load_policy_text
from broker_proxy.runtime import policy_reload, policy_worker
from broker_proxy.runtime.policy_reload import PolicyReloader
from tests.decision_setup import POLICY, Setup

EXAMPLES = sorted(path for path in (Path(__file__).resolve().parents[1] / "policies").glob("*.yaml")
                  if not path.name.endswith(".policy-test.yaml"))

# A child that answers like the real one, after sleeping when the policy asks it to
# ("# slow: SECONDS" in the text): a huge policy without the wait of writing one.
SLOW_CHILD = (
    "import re, sys, time\n"
    "from broker_proxy.runtime.policy_worker import write_answer\n"
    "data = sys.stdin.buffer.read()\n"
    "slow = re.search(rb'# slow: ([0-9.]+)', data)\n"
    "time.sleep(float(slow.group(1)) if slow else 0)\n"
    "write_answer(data, sys.argv[1], sys.stdout.buffer)\n"
)
SLOW_COMMAND = [sys.executable, "-c", SLOW_CHILD]


def answer_of(data: bytes, source: str = "p.yaml") -> bytes:
    out = io.BytesIO()
    policy_worker.write_answer(data, source, out)
    return out.getvalue()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_every_example_policy_comes_back_from_the_child_equal(path: Path) -> None:
    output = answer_of(path.read_bytes(), str(path))
    assert policy_worker.read_answer(output, str(path), 0, b"") == load_policy(path)


def test_a_policy_of_many_secrets_comes_back_whole_in_batches() -> None:
    lines = ["version: 1", "secrets:"]
    for index in range(1000):
        lines += [f"  s{index}:", "    from: vault", "    destinations: [{host: a.example}]"]
    text = "\n".join([*lines, "agents: {}", ""]).encode()
    output = answer_of(text)
    policy = policy_worker.read_answer(output, "p.yaml", 0, b"")
    assert list(policy.secrets) == [f"s{index}" for index in range(1000)]
    assert policy.digest == hashlib.sha256(text).hexdigest()


def test_a_rejected_policy_comes_back_with_the_loaders_own_lines() -> None:
    text = "version: 1\nsecrets:\n  a: {from: nope}\n"
    with pytest.raises(PolicyError) as in_process:
        load_policy_text(text, "bad.yaml")
    with pytest.raises(PolicyError) as raised:
        policy_worker.read_answer(answer_of(text.encode(), "bad.yaml"), "bad.yaml", 0, b"")
    assert raised.value.issues == in_process.value.issues
    assert [str(issue) for issue in raised.value.issues] == [
        'bad.yaml:3:3: secrets.a: missing required field "destinations"',
        "bad.yaml:3:13: secrets.a.from: not a secret source: use vault, env:VAR, file:PATH, "
        "keyring:SERVICE/USER or command",
    ]


def test_the_answer_is_read_with_an_unpickler_that_builds_only_the_model() -> None:
    hostile = pickle.dumps(("policy", print))
    with pytest.raises(policy_worker.WorkerFailed):
        policy_worker.read_answer(hostile, "p.yaml", 0, b"")
    with pytest.raises(policy_worker.WorkerFailed, match="exited with code 1: boom"):
        policy_worker.read_answer(b"", "p.yaml", 1, b"Traceback\nboom\n")


def test_a_policy_needing_more_memory_than_allowed_is_refused_on_its_own_line(
        tmp_path: Path) -> None:
    # Only the load is limited: the child has imported everything before the limit is set.
    command = [sys.executable, "-c",
               "import sys\nfrom broker_proxy.runtime import policy_worker as w\n"
               "w.MEMORY_LIMIT_MIB = 1\n"
               "w.resource.setrlimit = lambda *a: None\n"
               "def fail(data, source):\n    raise MemoryError\n"
               "w.load_policy_bytes = fail\n"
               "sys.exit(w.main(sys.argv[1:]))\n"]
    child = policy_worker.start("big.yaml", b"version: 1\n", command)
    output, errors = child.communicate(timeout=60)
    with pytest.raises(PolicyError, match=r"^big.yaml:0:0: policy: too large to load: it needs "
                                          r"more than 1 MiB of memory"):
        policy_worker.read_answer(output, "big.yaml", child.returncode, errors)


def _write(path: Path, text: str) -> str:
    staging = path.with_suffix(".tmp")
    staging.write_text(text)
    staging.replace(path)
    return hashlib.sha256(text.encode()).hexdigest()


def _reloader(setup: Setup, path: Path, command: list[str] | None = None) -> PolicyReloader:
    path.write_text(POLICY)
    return PolicyReloader(setup.broker, path, poll_interval=0.1, worker_command=command)


def _count(setup: Setup, result: str) -> float:
    value = setup.broker.metrics.registry.get_sample_value(
        "broker_policy_reloads_total", {"result": result})
    return value or 0.0


def test_a_changed_file_loads_in_a_child_and_swaps_in(setup: Setup, tmp_path: Path) -> None:
    reloader = _reloader(setup, tmp_path / "policy.yaml")
    digest = _write(tmp_path / "policy.yaml", POLICY + "# edited\n")
    result = reloader.check()
    assert result is not None and result.ok and result.digest == digest
    assert setup.broker.policy.policy.digest == digest
    assert reloader.check() is None  # unchanged since: nothing to do


def test_a_newer_file_supersedes_the_one_still_being_read(setup: Setup, tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    reloader = _reloader(setup, path, SLOW_COMMAND)
    before = setup.broker.policy
    _write(path, POLICY + "# slow: 60\n")
    results = []
    worker = threading.Thread(target=lambda: results.append(reloader.reload("file_changed")))
    worker.start()
    deadline = time.monotonic() + 30
    while reloader._loading is None and time.monotonic() < deadline:
        time.sleep(0.01)
    slow_child = reloader._loading
    assert slow_child is not None, "the slow load never started"
    assert setup.broker.policy is before  # nothing swapped while it reads
    newest = _write(path, POLICY + "# the newest\n")
    worker.join(timeout=30)
    assert not worker.is_alive(), "the stale load was not abandoned"
    [result] = results
    assert result.ok and result.digest == newest
    assert setup.broker.policy.policy.digest == newest
    assert _count(setup, "superseded") == 1 and _count(setup, "ok") == 1
    assert not Path(f"/proc/{slow_child}").exists() or \
        "zombie" in Path(f"/proc/{slow_child}/status").read_text()  # killed, not left running


def test_an_answer_for_bytes_no_longer_on_disk_never_serves(
        setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file changes after the child answered, while the indexes are built: the late
    answer is dropped and the newer file loaded, even though nothing was killed."""
    path = tmp_path / "policy.yaml"
    reloader = _reloader(setup, path)
    newest = POLICY + "# written during the build\n"
    built = []

    class Racing(ActivePolicy):
        @classmethod
        def build(cls, policy):  # type: ignore[no-untyped-def]
            built.append(policy.digest)
            if len(built) == 1:
                _write(path, newest)
            return ActivePolicy.build(policy)

    monkeypatch.setattr(policy_reload, "ActivePolicy", Racing)
    first = _write(path, POLICY + "# first\n")
    result = reloader.reload("file_changed")
    assert built[0] == first
    assert result.ok and result.digest == hashlib.sha256(newest.encode()).hexdigest()
    assert setup.broker.policy.policy.digest == result.digest
    assert _count(setup, "superseded") == 1


def test_a_crashed_child_is_a_rejection_and_the_last_good_policy_stays(
        setup: Setup, tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    reloader = _reloader(setup, path, [sys.executable, "-c", "import sys; sys.exit(3)"])
    before = setup.broker.policy
    _write(path, POLICY + "# fine, but the child dies\n")
    result = reloader.reload("file_changed")
    assert not result.ok and result.error is not None
    assert result.error.startswith(f"{path}:0:0: policy: cannot load: the policy loader "
                                   "process exited with code 3")
    assert setup.broker.policy is before
    assert reloader.file_problem == result.error


def test_the_child_gets_no_secret_from_the_proxys_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_PROXY_MASTER_KEY", "not-for-the-child")
    monkeypatch.setenv("API_TOKEN", "not-for-the-child-either")
    child = policy_worker.start("p.yaml", b"", [sys.executable, "-c",
                                                "import os; print(sorted(os.environ))"])
    output, _ = child.communicate(timeout=60)
    names = output.decode()
    assert "BROKER_PROXY_MASTER_KEY" not in names and "API_TOKEN" not in names
    assert "PATH" in names


def test_a_large_policy_reaches_a_child_that_reads_it_slowly(setup: Setup, tmp_path: Path) -> None:
    """More bytes than a pipe holds, read only after several of the watcher's looks: the child
    must still get all of them (a pipe fed by a retried communicate() stopped half-way)."""
    path = tmp_path / "policy.yaml"
    slow_reader = [sys.executable, "-c",
                   "import sys, time\n"
                   "from broker_proxy.runtime.policy_worker import write_answer\n"
                   "time.sleep(0.5)\n"
                   "write_answer(sys.stdin.buffer.read(), sys.argv[1], sys.stdout.buffer)\n"]
    reloader = _reloader(setup, path, slow_reader)
    digest = _write(path, POLICY + "#" + "x" * (4 << 20) + "\n")
    result = reloader.reload("file_changed")
    assert result.ok and result.digest == digest


def _large(text: str) -> str:
    """``text`` past the size above which start-up loads in a child (a comment fills it)."""
    return text + "#" + "x" * policy_worker.START_IN_CHILD_ABOVE + "\n"


def test_start_up_loads_a_large_file_in_a_child_and_a_small_one_in_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = []
    real_start = policy_worker.start
    monkeypatch.setattr(policy_worker, "start",
                        lambda *args: started.append(args[0]) or real_start(*args))
    small, large = tmp_path / "small.yaml", tmp_path / "large.yaml"
    small.write_text(POLICY)
    large.write_text(_large(POLICY))
    assert policy_worker.load_at_start(small) == load_policy(small)
    assert started == []
    assert policy_worker.load_at_start(large) == load_policy(large)
    assert started == [str(large)]
    broken = tmp_path / "broken.yaml"
    broken.write_text(_large(POLICY.replace("version: 1", "version: 1\nbogus: 2", 1)))
    with pytest.raises(PolicyError) as in_child:
        policy_worker.load_at_start(broken)
    with pytest.raises(PolicyError) as in_process:
        load_policy(broken)
    assert in_child.value.issues == in_process.value.issues


def test_start_up_loads_in_process_when_the_child_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy_worker, "command",
                        lambda: [sys.executable, "-c", "import sys; sys.exit(3)"])
    large = tmp_path / "large.yaml"
    large.write_text(_large(POLICY))
    assert policy_worker.load_at_start(large) == load_policy(large)
