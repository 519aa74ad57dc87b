"""What a `broker-proxy run` process imports before it serves: only what it uses.

Every proxy start pays for its imports (the suite starts a proxy a few hundred times, operators
on every restart and every worker). graphql-core, joserfc and slack_sdk are imported where a
GraphQL document, an ID token or a Slack call needs them; mitmproxy's default addons (ldap3,
Flask, Werkzeug, pyparsing's flow filters) not at all, yet `default_addons()` still works for
whoever asks (mitmdump). Each check runs in a fresh interpreter: this process has imported
everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys

NOT_AT_START = ("graphql", "joserfc", "slack_sdk", "ldap3", "flask", "werkzeug",
                "mitmproxy.addons.proxyauth", "mitmproxy.addons.onboarding",
                "mitmproxy.flowfilter")


def fresh(code: str) -> object:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    return json.loads(done.stdout)


def test_the_proxy_start_path_leaves_unused_libraries_unimported() -> None:
    loaded = fresh("import json, sys\n"
                   "import broker_proxy.cli, broker_proxy.runtime.process\n"
                   f"print(json.dumps([m for m in {NOT_AT_START!r} if m in sys.modules]))")
    assert loaded == []


def test_mitmproxy_default_addons_are_still_there_for_whoever_asks() -> None:
    names = fresh("import json\n"
                  "import broker_proxy.addons.runner\n"
                  "from mitmproxy.addons import default_addons\n"
                  "import mitmproxy.addons\n"
                  "assert mitmproxy.addons.default_addons is default_addons\n"
                  "print(json.dumps([type(a).__name__ for a in default_addons()]))")
    assert isinstance(names, list)
    assert {"ProxyAuth", "Onboarding", "MapLocal", "BlockList", "Proxyserver"} <= set(names)


def test_a_name_mitmproxy_addons_does_not_define_is_still_an_attribute_error() -> None:
    answer = fresh("import json\n"
                   "import broker_proxy.addons.runner\n"
                   "import mitmproxy.addons\n"
                   "try:\n"
                   "    mitmproxy.addons.no_such_name\n"
                   "except AttributeError as error:\n"
                   "    print(json.dumps(str(error)))\n")
    assert answer == "module 'mitmproxy.addons' has no attribute 'no_such_name'"
