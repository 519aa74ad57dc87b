"""mitmproxy's start-up error check counts mitmproxy's errors, not the broker's background
reports: a checkpoint copy that cannot be written logged at error level on its first tick, and on
a slow machine that came before start-up ended and mitmproxy exited the whole proxy."""

from __future__ import annotations

import logging

from broker_proxy.addons.startup_errors import MitmproxyStartupErrors


def test_a_broker_error_during_start_up_does_not_stop_the_proxy() -> None:
    check = MitmproxyStartupErrors()
    try:
        logging.getLogger("broker_proxy.audit").error("audit checkpoint copy failed: x")
        logging.getLogger("broker_proxy").error("webhook failed")
        assert check.logger.has_errored == []
        logging.getLogger("mitmproxy.proxy.mode_servers").error("cannot bind")
        logging.getLogger("broker_proxy_lookalike").error("not ours")
        assert [r.name for r in check.logger.has_errored] == [
            "mitmproxy.proxy.mode_servers", "broker_proxy_lookalike"]
    finally:
        check.finish()
