"""`make test` and `make demo` on a fresh machine: what they install, and the one line they say
when they cannot (scripts/test-prereqs, scripts/install-venv, the Makefile).

The prerequisites script is run with a PATH of our making, so "nothing installed" and "not
root" are real conditions for it, not mocks of the code under test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from broker_proxy.devtools.browser import BrowserNotFound, find_chromium

REPO = Path(__file__).resolve().parent.parent
PREREQS = REPO / "scripts" / "test-prereqs"


def _bin_dir(tmp_path: Path, *, uid: int, tools: tuple[str, ...] = ()) -> Path:
    """A PATH directory with a fake `id` (so root or not is chosen) and the named tools."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    for name in tools:
        (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
    for item in bin_dir.iterdir():
        item.chmod(0o755)
    return bin_dir


def _run(bin_dir: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(bin_dir), "HOME": str(bin_dir.parent), **extra}
    return subprocess.run(["/bin/sh", str(PREREQS)], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def test_nothing_installed_and_not_root_stops_at_once_with_one_line(tmp_path: Path) -> None:
    done = _run(_bin_dir(tmp_path, uid=1000))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "redis-server" in lines[0] and "install" in lines[0]
    assert done.stdout == ""


def test_missing_browser_without_apt_says_what_to_install(tmp_path: Path) -> None:
    # root, but no apt-get (Fedora, macOS): nothing can be installed for the user.
    done = _run(_bin_dir(tmp_path, uid=0, tools=("redis-server",)))
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert "Chromium" in line and "BROKER_PROXY_CHROMIUM" in line


@pytest.mark.parametrize("name", ["chromium", "chromium-browser", "google-chrome"])
def test_a_browser_under_any_usual_name_on_path_is_enough(tmp_path: Path, name: str) -> None:
    done = _run(_bin_dir(tmp_path, uid=1000, tools=("redis-server", name)))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_broker_proxy_chromium_names_a_browser_anywhere(tmp_path: Path) -> None:
    bin_dir = _bin_dir(tmp_path, uid=1000, tools=("redis-server",))
    browser = tmp_path / "Chrome.app-binary"
    browser.write_text("#!/bin/sh\n")
    browser.chmod(0o755)
    assert _run(bin_dir, BROKER_PROXY_CHROMIUM=str(browser)).returncode == 0
    wrong = _run(bin_dir, BROKER_PROXY_CHROMIUM=str(tmp_path / "nope"))
    assert wrong.returncode == 1 and "not an executable" in wrong.stderr


def test_the_tests_find_the_browser_the_same_way(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    browser = tmp_path / "google-chrome"
    browser.write_text("#!/bin/sh\n")
    browser.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("BROKER_PROXY_CHROMIUM", raising=False)
    assert find_chromium() == str(browser)
    monkeypatch.setenv("BROKER_PROXY_CHROMIUM", str(tmp_path / "missing"))
    with pytest.raises(BrowserNotFound, match="not an executable"):
        find_chromium()


def test_on_this_machine_the_prerequisites_are_there_and_quiet() -> None:
    # Here (root on Debian) they are installed already, or installed now: then nothing is said.
    done = subprocess.run(["/bin/sh", str(PREREQS)], capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    assert shutil.which("redis-server")


def test_ci_runs_make_test_and_make_test_runs_the_prerequisites_first() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci and "apt-get" not in ci
    makefile = (REPO / "Makefile").read_text()
    assert "test: test-prereqs $(STAMP)" in makefile
    # demo and run install the product alone; the test extras come with the other targets.
    assert "demo: $(DEMO_STAMP)" in makefile and "run: $(DEMO_STAMP)" in makefile


def test_demo_installs_the_product_without_the_test_extras() -> None:
    script = (REPO / "scripts" / "install-venv").read_text()
    assert 'demo) spec=. ;' in script and 'test) spec=.[test] ;' in script
    # what `broker-proxy demo` imports is in the product's own dependencies: nothing from
    # requests, httpx or the SDKs (the test extras).
    probe = ("import sys, broker_proxy.cli.demo_cmd, broker_proxy.devtools.demo\n"
             "bad = [m for m in ('requests', 'httpx', 'pytest', 'playwright', 'boto3') "
             "if m in sys.modules]\nprint(','.join(bad))\n")
    done = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-c", probe],
                          capture_output=True, text=True, timeout=120, check=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.stdout.strip() == ""
