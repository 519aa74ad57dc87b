"""The outbox that tells chat services about held requests never blocks the proxy: a full queue
drops the notice and counts it; what is queued goes out in order on its own thread."""

from __future__ import annotations

import threading

from broker_proxy.approvals.outbox import QUEUE_SIZE, Outbox


def test_a_stuck_sender_fills_the_queue_and_the_rest_is_dropped_not_waited_for() -> None:
    release, sent, dropped = threading.Event(), [], []

    def send(item: int) -> None:
        release.wait(10)  # a chat service that does not answer
        sent.append(item)

    outbox = Outbox[int]("test-outbox", send, lambda: dropped.append(1))
    for item in range(QUEUE_SIZE + 5):  # one is taken by the stuck sender, 100 wait
        outbox.put(item)
    assert len(dropped) in (4, 5)  # 5 if the sender had not taken the first one yet
    release.set()
    for _ in range(200):
        if len(sent) + len(dropped) == QUEUE_SIZE + 5:
            break
        threading.Event().wait(0.05)
    assert sent == sorted(sent) and len(sent) + len(dropped) == QUEUE_SIZE + 5
