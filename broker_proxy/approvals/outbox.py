"""A bounded queue drained by one daemon thread: how a held request is told to the outside.

Shared by the JSON webhook and Slack: a slow or dead chat service must never delay a decision
or the request it is about, so `put` only queues, and a full queue drops the notice (logged and
counted) instead of blocking the proxy.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("broker_proxy.approvals")

QUEUE_SIZE = 100


class Outbox[Item]:
    def __init__(self, name: str, send: Callable[[Item], None],
                 on_failure: Callable[[], None]) -> None:
        # `send` handles (logs and counts) its own failures: each knows what it may name.
        self._name, self._send, self._on_failure = name, send, on_failure
        self._queue: queue.Queue[Item] = queue.Queue(QUEUE_SIZE)
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def put(self, item: Item) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            log.warning("%s queue is full; a notice was dropped", self._name)
            self._on_failure()

    def _run(self) -> None:
        while True:
            self._send(self._queue.get())
