"""What the `mitmdump -s` script gets from the runtime: a broker opened by BrokerProcess.

The script (addons/broker.py) is in the addon layer, which never imports the runtime (imports
go CLI -> runtime -> addons -> core). It finds this function through the package's entry point
``broker_proxy.mitmdump`` (pyproject.toml), and hands in its mitmproxy options as plain values;
the settings are built by the same RunConfig builder as `broker-proxy run`'s, and the broker by
the same BrokerProcess, with the stages mitmdump cannot run switched off (``MITMDUMP_OFF``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from broker_proxy.decision.broker import Broker
from broker_proxy.runtime.process import MITMDUMP_OFF, BrokerProcess
from broker_proxy.runtime.run_config import build_run_config


def open_for_script(*, home: str | None, policy: str | None, resolve: Sequence[str],
                    trusted_ca: str | None) -> Broker:
    """``broker_home``, ``broker_policy``, ``broker_resolve`` and mitmproxy's
    ``ssl_verify_upstream_trusted_ca`` (the whole upstream bundle, used as it is)."""
    given = argparse.Namespace(home=home or None, policy=policy or None, resolve=list(resolve),
                               upstream_ca=[trusted_ca] if trusted_ca else None)
    process = BrokerProcess(build_run_config(given, os.environ), off=MITMDUMP_OFF)
    return process.start()
