"""`broker-proxy policy init`: a starting policy from the examples shipped in the package.

policies/ in the checkout is the source; a wheel carries the same files as
`broker_proxy.examples`, so a pipx or uv install can start without a checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from broker_proxy.cli import main
from broker_proxy.policy_tools.examples import example_names, example_text
from tests.test_packaging import wheel  # noqa: F401  (the module's wheel fixture)

POLICIES = Path(__file__).resolve().parent.parent / "policies"


def test_the_shipped_examples_are_the_checkouts_policies() -> None:
    in_checkout = sorted(p.name.removesuffix(".yaml") for p in POLICIES.glob("*.yaml")
                         if not p.name.endswith(".policy-test.yaml"))
    assert example_names() == in_checkout
    for name in in_checkout:
        assert example_text(name) == (POLICIES / f"{name}.yaml").read_text()


def test_init_writes_the_example_into_a_fresh_home_and_it_checks(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    assert main(["--home", str(home), "policy", "init"]) == 0
    written = home / "policy.yaml"
    assert f"wrote {written}" in capsys.readouterr().out
    assert written.read_text() == (POLICIES / "example.yaml").read_text()
    assert (written.stat().st_mode & 0o777, home.stat().st_mode & 0o777) == (0o600, 0o700)
    assert main(["--home", str(home), "policy", "check", str(written)]) == 0


def test_init_keeps_an_existing_policy_and_names_unknown_examples(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "p.yaml"
    target.write_text("mine")
    assert main(["policy", "init", "--policy", str(target), "--example", "aws"]) == 1
    assert "exists" in capsys.readouterr().err and target.read_text() == "mine"
    assert main(["policy", "init", "--policy", str(target), "--example", "aws", "--force"]) == 0
    assert target.read_text() == (POLICIES / "aws.yaml").read_text()
    assert main(["policy", "init", "--policy", str(tmp_path / "x.yaml"), "--example",
                 "nope"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'no example policy "nope"' in err[0] and "minimal" in err[0]


def test_init_list_names_each_example_with_what_it_is_for(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "init", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == example_names()
    assert all(len(line.split()) > 3 for line in lines)


def test_run_without_a_policy_points_at_policy_init(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--home", str(tmp_path / "home"), "run", "--listen", "127.0.0.1:0",
                 "--metrics", "off", "--admin", "off"]) == 1
    assert "broker-proxy policy init" in capsys.readouterr().err


def test_an_installed_wheel_carries_the_examples(wheel: Path, tmp_path: Path) -> None:  # noqa: F811
    names = zipfile.ZipFile(wheel).namelist()
    assert "broker_proxy/examples/example.yaml" in names
    assert "broker_proxy/examples/example.policy-test.yaml" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", str(target), str(wheel)], check=True, capture_output=True,
                   timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run([sys.executable, "-c", "import broker_proxy.examples as e; "
                           "print(e.__file__); from broker_proxy.cli import main; "
                           "main(['--home', 'h', 'policy', 'init', '--example', 'minimal'])"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          check=True)
    assert Path(done.stdout.splitlines()[0]).is_relative_to(target)
    assert (tmp_path / "h" / "policy.yaml").read_text() == (POLICIES / "minimal.yaml").read_text()


def test_the_wheel_puts_a_mitmdump_of_its_own_on_path(wheel: Path) -> None:  # noqa: F811
    # pipx and `uv tool install` link only the installed package's commands: the mitmdump -s
    # route needs one under broker-proxy's name.
    [entry_points] = [n for n in zipfile.ZipFile(wheel).namelist()
                      if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "broker-proxy-mitmdump = mitmproxy.tools.main:mitmdump" in text
    installed = Path(sys.executable).parent / "broker-proxy-mitmdump"
    done = subprocess.run([str(installed), "--version"], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.startswith("Mitmproxy: 12.3")
