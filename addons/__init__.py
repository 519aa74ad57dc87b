"""The mitmproxy layer (installed as broker_proxy.addons).

Before any of its modules imports mitmproxy's addons, their package is registered without its
default addons (lazy_mitmproxy_addons.py): about 0.2 s of CPU less on every proxy start.
"""

from broker_proxy.addons import lazy_mitmproxy_addons

lazy_mitmproxy_addons.install()
