"""`make` finds a Python >= 3.12 on its own, or says in one line that there is none."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

FIND_PYTHON = Path(__file__).resolve().parent.parent / "scripts" / "find-python"


def test_find_python_prints_a_new_enough_interpreter() -> None:
    done = subprocess.run(["sh", str(FIND_PYTHON)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    interpreter = done.stdout.strip()
    version = subprocess.run([interpreter, "-c", "import sys; print(sys.version_info >= (3, 12))"],
                             capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == "True"


def test_find_python_without_any_candidate_fails_with_one_line(tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path)}
    for tool in ("ls", "sort"):  # what the script itself needs, and no python
        (tmp_path / tool).symlink_to(f"/bin/{tool}" if Path(f"/bin/{tool}").exists()
                                     else f"/usr/bin/{tool}")
    done = subprocess.run(["/bin/sh", str(FIND_PYTHON)], capture_output=True, text=True,
                          timeout=60, env=env)
    if done.returncode == 0:
        pytest.fail(f"found {done.stdout!r} with no interpreter on PATH")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs Python >= 3.12" in lines[0]
