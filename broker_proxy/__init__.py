"""broker-proxy: a credential broker for AI agents.

The core (this package) never imports mitmproxy, so every decision it makes can be
tested and benchmarked without a proxy. The mitmproxy layer lives in ``addons/``.
"""

__version__ = "0.1.0"
