"""Where a stream's tail may begin a secret: the one-pass pattern agrees with the start table.

``_hold_from`` tries a partial match only where the tail's first three bytes (or the last one
or two bytes of the data) are a key of the plan's ``starts``; the plan finds those positions
with one ``re`` pass (``tail_starts``). Both must name the same positions, overlapping ones
and those cut short by the end of the data included, or a partial secret could be released.
"""

from __future__ import annotations

import random
import secrets

import pytest

from broker_proxy.scrubbing.scrubber import Scrubber


def _values(rng: random.Random, count: int) -> dict[str, str]:
    values = {f"k{i}": "sk-" + secrets.token_urlsafe(rng.randint(8, 40)) for i in range(count)}
    # Characters that are escaped in patterns, percent-encoded, JSON-escaped, or not ASCII.
    values["odd"] = 'a\\b%c d/"é\x00\n+' + secrets.token_urlsafe(8)
    return values


@pytest.mark.parametrize("count", [1, 3, 20])
def test_tail_start_positions_are_exactly_the_start_table_keys(count: int) -> None:
    rng = random.Random(count)
    scrubber = Scrubber({name: (value, "{{secret:" + name + "}}")
                         for name, value in _values(rng, count).items()})
    plan = scrubber._plan
    assert plan is not None and plan.tail_starts is not None
    starts = plan.starts
    alphabet = sorted(set(b"".join(starts)) | {0x20, 0x7A, 0xFF})
    for _ in range(3000):
        data = bytes(rng.choices(alphabet, k=rng.randint(0, 48)))
        # A key's bytes placed whole, so three-byte starts occur, not only stray bytes.
        key = rng.choice(sorted(starts))
        at = rng.randint(0, len(data))
        data = data[:at] + key + data[at:]
        window = rng.randint(0, len(data))
        expected = [i for i in range(window, len(data)) if starts.get(data[i:i + 3])]
        found = [m.start() for m in plan.tail_starts.finditer(data, window)]
        assert found == expected
