"""mitmproxy's start-up error check, kept to mitmproxy's own errors.

mitmproxy's `ErrorCheck` exits the process when any error is logged before start-up ends. The
broker's background threads report at error level from their first tick (a checkpoint copy that
cannot be written, a webhook that fails): on a slow machine that tick can come before mitmproxy's
start-up ends, and a copy that only degrades readiness stopped the whole proxy ("Error logged
during startup, exiting..."). The broker's own start-up failures are raised by the runtime before
mitmproxy starts, never only logged, so its loggers are left out of the check.
"""

from __future__ import annotations

import logging

from mitmproxy.addons.errorcheck import ErrorCheck

BROKER_LOGGERS = "broker_proxy"


def _from_mitmproxy(record: logging.LogRecord) -> bool:
    return record.name != BROKER_LOGGERS and not record.name.startswith(BROKER_LOGGERS + ".")


class MitmproxyStartupErrors(ErrorCheck):
    """`ErrorCheck` that counts only records not logged by the broker's own loggers."""

    def __init__(self) -> None:
        super().__init__()
        self.logger.addFilter(_from_mitmproxy)
