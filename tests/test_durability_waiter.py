"""Requests waiting for their audit fsync are settled in batches, with the right outcome each."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from broker_proxy.audit.durability_waiter import DurabilityWaiter


def test_every_waiter_gets_its_own_outcome() -> None:
    waiter: DurabilityWaiter[int, int] = DurabilityWaiter(lambda item: item * 2)

    async def main() -> list[int]:
        return await asyncio.gather(*(waiter.wait(n) for n in range(200)))

    try:
        assert asyncio.run(main()) == [n * 2 for n in range(200)]
    finally:
        waiter.stop()


def test_waiters_arriving_during_a_sync_share_one_hand_off() -> None:
    first_started, release = threading.Event(), threading.Event()
    settled: list[int] = []

    def settle(item: int) -> int:
        if item == 0:
            first_started.set()
            release.wait(5)
        settled.append(item)
        return item

    waiter: DurabilityWaiter[int, int] = DurabilityWaiter(settle, inline_below=0)

    async def main() -> list[int]:
        first = asyncio.ensure_future(waiter.wait(0))
        await asyncio.get_running_loop().run_in_executor(None, first_started.wait, 5)
        rest = [asyncio.ensure_future(waiter.wait(n)) for n in range(1, 50)]
        await asyncio.sleep(0)
        release.set()
        return await asyncio.gather(first, *rest)

    try:
        assert asyncio.run(main()) == list(range(50))
        assert settled == list(range(50))
        assert waiter.batches == 2  # the first alone, then the 49 that waited behind it
    finally:
        waiter.stop()


@pytest.mark.parametrize("inline_below", [0.0, 1.0], ids=["thread", "inline"])
def test_a_failure_reaches_the_waiter(inline_below: float) -> None:
    def settle(item: int) -> int:
        raise OSError(28, "No space left on device")

    waiter: DurabilityWaiter[int, int] = DurabilityWaiter(settle, inline_below=inline_below)
    try:
        with pytest.raises(OSError, match="No space"):
            asyncio.run(waiter.wait(1))
    finally:
        waiter.stop()


def test_fast_settles_run_on_the_loop_and_slow_ones_move_to_the_thread() -> None:
    delay = {"seconds": 0.0}

    def settle(item: int) -> str:
        time.sleep(delay["seconds"])
        return threading.current_thread().name

    waiter: DurabilityWaiter[int, str] = DurabilityWaiter(settle, inline_below=0.005)

    async def main() -> list[str]:
        where = [await waiter.wait(n) for n in range(3)]  # fast disk: inline
        delay["seconds"] = 0.05
        where += [await waiter.wait(n) for n in range(3)]  # a stall, then the thread
        delay["seconds"] = 0.0
        for _ in range(40):  # fast again: the average decays, the loop takes it back
            where.append(await waiter.wait(0))
        return where

    try:
        where = asyncio.run(main())
    finally:
        waiter.stop()
    main_thread = threading.main_thread().name
    assert where[:3] == [main_thread] * 3
    assert where[3] == main_thread  # the stall itself was paid once on the loop
    assert where[4:6] == ["audit-sync"] * 2
    assert where[-1] == main_thread


def test_no_wait_after_stop() -> None:
    waiter: DurabilityWaiter[int, int] = DurabilityWaiter(lambda item: item)
    assert asyncio.run(waiter.wait(1)) == 1
    waiter.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        asyncio.run(waiter.wait(2))


def test_waiters_of_one_loop_pass_are_settled_together_on_the_loop() -> None:
    settled_on: list[str] = []

    def settle(item: int) -> int:
        settled_on.append(threading.current_thread().name)
        return item

    waiter: DurabilityWaiter[int, int] = DurabilityWaiter(settle)

    async def main() -> list[int]:
        return await asyncio.gather(*(waiter.wait(n) for n in range(30)))

    try:
        assert asyncio.run(main()) == list(range(30))
    finally:
        waiter.stop()
    assert waiter.batches == 1  # all 30 asked during one pass: one batch, one fsync
    assert set(settled_on) == {threading.main_thread().name}
