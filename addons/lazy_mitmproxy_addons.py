"""mitmproxy's `addons` package without its ~30 default addons until someone asks for them.

`import mitmproxy.addons.proxyserver` first runs `mitmproxy/addons/__init__.py`, which imports
every default addon for `default_addons()`: proxyauth (ldap3, pyasn1), onboarding (Flask,
Jinja2), maplocal (Werkzeug), blocklist (pyparsing's flow filters)... `broker-proxy run` uses six
of them (runner.py), and those imports cost about 0.2 s of CPU on every proxy start.

`install()` puts the package in `sys.modules` with its real spec but without running its
`__init__`; submodules import as usual through its `__path__`. The first lookup of any other
name (`default_addons`, by mitmdump or the console) runs the real `__init__` then: nothing is
missing, only later. Nothing happens when the package is already imported
(the `mitmdump -s` route) or is not a package as read (a later mitmproxy): plain import then.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from typing import Any

PACKAGE = "mitmproxy.addons"


def install() -> None:
    """Register `mitmproxy.addons` unexecuted, to run its `__init__` on first name lookup."""
    if PACKAGE in sys.modules:
        return
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader
    state = {"ran": False}

    def run_init(name: str) -> Any:
        # `from mitmproxy.addons import core` asks for `core` before importing the submodule:
        # a submodule's name is no reason to import the others.
        submodule = importlib.machinery.PathFinder.find_spec(f"{PACKAGE}.{name}", module.__path__)
        if state["ran"] or name.startswith("__") or submodule is not None:
            raise AttributeError(f"module {PACKAGE!r} has no attribute {name!r}")
        state["ran"] = True
        loader.exec_module(module)
        return getattr(module, name)

    module.__getattr__ = run_init  # type: ignore[method-assign]
    sys.modules[PACKAGE] = module
    parent = sys.modules.get("mitmproxy")
    if isinstance(parent, types.ModuleType):
        parent.addons = module  # type: ignore[attr-defined]
