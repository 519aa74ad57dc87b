"""Every patch of a mitmproxy internal checks it at start-up and refuses a changed mitmproxy."""

from __future__ import annotations

from pathlib import Path

import pytest
from broker_proxy.addons import debug_checks, reuse_port, server_names
from broker_proxy.addons.mitmproxy_compat import IncompatibleMitmproxy
from mitmproxy import connection
from mitmproxy.http import MessageData

from broker_proxy.cli import main

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_mitmproxy_is_pinned_to_the_tested_minor_series() -> None:
    import mitmproxy.version

    assert '"mitmproxy~=12.3.1",' in PYPROJECT.read_text()
    assert mitmproxy.version.VERSION.startswith("12.3.")


def test_the_installed_mitmproxy_passes_every_check() -> None:
    server_names.check()
    reuse_port.check()
    debug_checks.install()


def test_server_address_guard_that_changed_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection.Server, "__setattr__", object.__setattr__)
    with pytest.raises(IncompatibleMitmproxy, match=r"Server\.address"):
        server_names.check()


def test_debug_check_that_is_no_longer_a_type_check_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MessageData, "__post_init__", lambda self: None)
    with pytest.raises(IncompatibleMitmproxy, match="__post_init__"):
        debug_checks.install()


def test_listener_that_no_longer_uses_asyncio_start_server_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reuse_port.inspect, "getsource", lambda module: "trio.serve_tcp(")
    with pytest.raises(IncompatibleMitmproxy, match=r"asyncio\.start_server"):
        reuse_port.check()


def test_run_refuses_to_start_with_one_line_on_a_changed_mitmproxy(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(connection.Server, "__setattr__", object.__setattr__)
    code = main(["--home", str(tmp_path / "home"), "run", "--listen", "127.0.0.1:0",
                 "--metrics", "off", "--admin", "off"])
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and "mitmproxy 12.3.1 is not supported" in err
    assert not (tmp_path / "home").exists()  # refused before anything was opened
