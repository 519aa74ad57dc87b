"""Every benchmark script still runs: each once, with `--smoke` (tiny sizes, seconds).

Benchmarks that nothing runs rot: a grant store signature changed and `core_bench.py` refused
every decision, which only `make bench` showed. The scripts are found by reading
benchmarks/*.py (a module with an `if __name__ == "__main__":` block is a script), not from a
list, so a new benchmark is covered the day it lands, and must take `--smoke` to pass.

Each runs as its own process, as `make bench` runs it, against the real proxy where it drives
one; two at a time (most of a smoke run is processes starting, and the suite has the machine to
itself meanwhile): about 35 CPU seconds for the set, half a minute on 2 idle cores. Passing
means: exit status 0, no traceback, and figures printed. The figures mean nothing at these
sizes and are not checked; a script that measures a broken setup (errors or refusals where it
expects answers) must exit non-zero on its own.
"""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
DOCS = BENCHMARKS.parent / "docs" / "benchmarks.md"
# Scripts the smoke run leaves out, each with the reason (software a test machine lacks).
# Empty: peers.py runs Squid only where it is installed and says so in one line otherwise.
SKIPPED: dict[str, str] = {}
# Per script, on a loaded 2-core machine; a smoke run that needs more has stopped being one.
TIMEOUT_SECONDS = 120
AT_ONCE = 2


def is_entry_script(path: Path) -> bool:
    """True for a module with a top-level `if __name__ == "__main__":` block."""
    for node in ast.parse(path.read_text(), str(path)).body:
        if (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"
                and any(isinstance(c, ast.Constant) and c.value == "__main__"
                        for c in node.test.comparators)):
            return True
    return False


def entry_scripts() -> list[Path]:
    return sorted(path for path in BENCHMARKS.glob("*.py") if is_entry_script(path))


def test_the_benchmark_scripts_are_found() -> None:
    """The discovery itself: the scripts `make bench` runs are there, the helpers are not."""
    names = {path.name for path in entry_scripts()}
    assert {"run.py", "core_bench.py", "scrub_bench.py", "cpu_compare.py", "soak.py"} <= names
    assert not names & {"loadgen.py", "proc_stats.py", "smoke.py", "minimal_inject.py"}
    assert set(SKIPPED) <= names, "a skip entry names no script"


def test_the_docs_say_what_every_script_prints() -> None:
    """docs/benchmarks.md has a row for each script: how to run it, what it prints."""
    rows = {line.split("|")[1].strip().strip("`") for line in DOCS.read_text().splitlines()
            if line.startswith("| `")}
    missing = {path.name for path in entry_scripts()} - rows
    assert not missing, f"docs/benchmarks.md does not describe {sorted(missing)}"


@dataclass(frozen=True)
class SmokeRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def run_smoke(script: Path, scratch: Path) -> SmokeRun:
    """Run one script in a process group of its own: a script stopped for taking too long is
    stopped with every proxy and server it started, none left running after the suite."""
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, str(script), "--smoke"], cwd=scratch,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, _ = process.communicate()
        stderr = f"timed out after {TIMEOUT_SECONDS} s"
    return SmokeRun(process.returncode, stdout, stderr, time.monotonic() - started)


@pytest.fixture(scope="module")
def smoke_runs(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[SmokeRun]]]:
    """Start the smoke runs of the scripts this session selected, AT_ONCE at a time."""
    selected = [item.callspec.params["script"] for item in request.session.items
                if item.module is not None and item.module.__name__ == __name__
                and "script" in getattr(getattr(item, "callspec", None), "params", {})]
    with ThreadPoolExecutor(max_workers=AT_ONCE) as pool:
        runs = {script.name: pool.submit(run_smoke, script, tmp_path_factory.mktemp(script.stem))
                for script in selected if script.name not in SKIPPED}
        yield runs
        for run in runs.values():
            run.cancel()


@pytest.mark.parametrize("script", entry_scripts(), ids=lambda path: path.name)
def test_benchmark_runs_at_smoke_size(script: Path,
                                      smoke_runs: dict[str, Future[SmokeRun]]) -> None:
    if script.name in SKIPPED:
        pytest.skip(SKIPPED[script.name])
    done = smoke_runs[script.name].result()
    tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
    assert done.returncode == 0, f"{script.name} --smoke exited {done.returncode}:\n{tail}"
    assert "Traceback" not in done.stderr, f"{script.name} --smoke:\n{tail}"
    figures = [line for line in done.stdout.splitlines() if re.search(r"\d", line)]
    assert len(figures) >= 2, f"{script.name} --smoke printed no figures:\n{tail}"
    print(f"{script.name} --smoke: {done.seconds:.1f} s")
