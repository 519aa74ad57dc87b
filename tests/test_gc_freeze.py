"""Start-up objects are frozen once the proxy listens, unless switched off (see gc_freeze.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from broker_proxy.runtime.gc_freeze import freeze_startup_objects
from broker_proxy.runtime.run_config import gc_freeze_enabled


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the test runner's own objects go back to the collector


def test_what_lives_at_start_up_is_frozen(unfrozen: None) -> None:
    assert freeze_startup_objects(gc_freeze_enabled({})) is True
    assert gc.get_freeze_count() > 1000


def test_zero_leaves_the_collector_as_it_is(unfrozen: None) -> None:
    assert freeze_startup_objects(gc_freeze_enabled({"BROKER_PROXY_GC_FREEZE": "0"})) is False
    assert gc.get_freeze_count() == 0


def test_a_cycle_made_after_the_freeze_is_still_collected(unfrozen: None) -> None:
    freeze_startup_objects(gc_freeze_enabled({}))

    class Node:
        other: object

    first, second = Node(), Node()
    first.other, second.other = second, first
    gc.collect()  # nothing frozen is walked, the new cycle is
    del first, second
    assert gc.collect() >= 2
