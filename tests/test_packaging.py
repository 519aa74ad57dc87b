"""What a plain `pip install .` puts into site-packages.

The mitmproxy layer lives in addons/ in the checkout but must be installed as
``broker_proxy.addons``: a top-level package called ``addons`` would clash with anything else
of that name in the user's environment. The package list in pyproject.toml is explicit (the
mapping needs it), so a new package left out of it is caught here too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the sources, so no build/ or egg-info lands in the checkout."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("broker_proxy", "addons", "policies"):
        shutil.copytree(REPO / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(out), str(source)],
                   check=True, capture_output=True, timeout=300)
    [built] = out.glob("broker_proxy-*.whl")
    return built


def _packages_in_checkout() -> set[str]:
    found = {"broker_proxy.addons"}
    for init in (REPO / "broker_proxy").rglob("__init__.py"):
        found.add(".".join(init.parent.relative_to(REPO).parts))
    for init in (REPO / "addons").rglob("__init__.py"):
        found.add(".".join(("broker_proxy", *init.parent.relative_to(REPO).parts)))
    return found


def test_wheel_installs_the_addons_under_the_project_name_only(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/", 1)[0] for name in names}
    assert "addons" not in top_level
    assert {n for n in top_level if not n.endswith(".dist-info")} == {"broker_proxy"}
    assert "broker_proxy/addons/broker.py" in names
    assert "broker_proxy/admin_openapi.json" in names
    # The console's pages are package data: without them /ui/ answers 404 once installed.
    assert {f"broker_proxy/console/static/{page}"
            for page in ("index.html", "console.js", "console.css")} <= set(names)
    packages = {".".join(Path(n).parent.parts) for n in names if n.endswith("/__init__.py")}
    assert _packages_in_checkout() <= packages, "a package is missing from pyproject.toml"


def test_installed_wheel_gives_mitmdump_a_script_inside_the_package(
        wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", str(target), str(wheel)], check=True, capture_output=True,
                   timeout=300)
    # PYTHONPATH comes before the editable install's finder: the wheel's copy is what runs.
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = ("import importlib.util, broker_proxy\n"
             "from broker_proxy.cli import main\n"
             "print(broker_proxy.__file__)\n"
             "print(importlib.util.find_spec('addons'))\n"
             "main(['mitmdump-script'])\n")
    done = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path,
                          capture_output=True, text=True, check=True, timeout=120)
    package_file, addons_spec, script = done.stdout.split()
    assert Path(package_file).is_relative_to(target)
    assert addons_spec == "None"
    assert Path(script) == target / "broker_proxy" / "addons" / "broker.py"
