"""The example policies shipped in the package, for `broker-proxy policy init`.

An install from a wheel has no checkout to copy `policies/example.yaml` from, so the examples
are package data (`broker_proxy.examples`, the checkout's policies/ directory). Each is read
as text and written as it is: its comments are the documentation a new user edits from.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

DEFAULT_EXAMPLE = "example"
_SUFFIX = ".yaml"
_TEST_SUFFIX = ".policy-test.yaml"


class ExampleError(ValueError):
    """No example of that name, or the target cannot be written."""


def example_names() -> list[str]:
    root = resources.files("broker_proxy.examples")
    return sorted(item.name.removesuffix(_SUFFIX) for item in root.iterdir()
                  if item.name.endswith(_SUFFIX) and not item.name.endswith(_TEST_SUFFIX))


def example_text(name: str) -> str:
    if name not in example_names():
        raise ExampleError(f'no example policy "{name}"; there are: '
                           + ", ".join(example_names()))
    return resources.files("broker_proxy.examples").joinpath(name + _SUFFIX).read_text()


def example_summary(name: str) -> str:
    """The example's opening comment up to its first full stop: what it is for."""
    words: list[str] = []
    for line in example_text(name).splitlines():
        if not line.startswith("#") or not line.strip("# "):
            break
        words += line.lstrip("# ").split()
    text = " ".join(words)
    end = text.find(". ")
    text = text if end < 0 else text[:end + 1]
    return text if len(text) <= 100 else text[:99].rstrip() + "..."


def write_example(name: str, target: Path, *, force: bool = False) -> None:
    """Write the example to target (0600; its directory 0700 if it is made here)."""
    text = example_text(name)
    if target.exists() and not force:
        raise ExampleError(f"{target} exists; edit it, or pass --force to replace it")
    if not target.parent.exists():
        target.parent.mkdir(mode=0o700, parents=True)
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
