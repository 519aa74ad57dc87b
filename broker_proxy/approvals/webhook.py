"""Tell a chat room or a pager that a request waits: one JSON POST per held request.

Sent from one daemon thread through a bounded queue (outbox.py), so a slow or dead webhook never
delays a decision or the request it is about. Failures are logged (by host only: a chat
service's webhook URL carries its own secret in the path) and counted.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Callable
from urllib.parse import urlsplit

from broker_proxy.approvals.desk import HeldRequest, Notifier
from broker_proxy.approvals.outbox import Outbox

log = logging.getLogger("broker_proxy.approvals")

TIMEOUT_S = 5.0


class WebhookNotifier:
    def __init__(self, url: Callable[[], str | None], console_url: Callable[[], str | None],
                 on_failure: Callable[[], None]) -> None:
        # Callables: the policy's URL may change on reload, the console's address once it binds.
        self._url = url
        self._console_url = console_url
        self._on_failure = on_failure
        self._outbox = Outbox[dict[str, object]]("approval-webhook", self._deliver, on_failure)

    def notify(self, item: HeldRequest) -> None:
        if self._url() is None:
            return
        console = self._console_url()
        # Not the preview: this notice only says that someone should look; who decides from a
        # chat tool is shown the preview there (chat_preview.py, at the destination's
        # approval_preview level), or opens the console.
        public = {k: v for k, v in item.to_public_dict().items() if k != "preview"}
        notice: dict[str, object] = {"event": "request_held", "request": public,
                  "console": f"{console}/ui/#/approvals/{item.id}" if console else None,
                  "text": f"{item.agent} ({item.task}) waits for approval: "
                          f"{item.shape.method} {item.shape.host}{item.shape.path} "
                          f"with {', '.join(item.secrets)}"}
        self._outbox.put(notice)

    def _deliver(self, notice: dict[str, object]) -> None:
        if (url := self._url()) is not None:  # the policy may have dropped it meanwhile
            self._send(url, notice)

    def _send(self, url: str, notice: dict[str, object]) -> None:
        # The policy loader only lets http(s) URLs through, hence the S310 exemptions.
        request = urllib.request.Request(  # noqa: S310
            url, data=json.dumps(notice).encode(), method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "broker-proxy"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:  # noqa: S310
                if answer.status >= 300:
                    raise OSError(f"status {answer.status}")
        except Exception as error:  # every failure is the same to the decision: none
            log.warning("approval webhook to %s failed: %s", urlsplit(url).hostname,
                        type(error).__name__)
            self._on_failure()


class Notifiers:
    """Tells every configured channel (the JSON webhook, Slack) about a held request."""

    def __init__(self, *notifiers: Notifier) -> None:
        self._notifiers = notifiers

    def notify(self, item: HeldRequest) -> None:
        for notifier in self._notifiers:
            notifier.notify(item)  # each only queues: none waits for the network
