"""A person at the admin API, for the tests of approval per request: waits for a held request
to show up, then approves or denies it."""

from __future__ import annotations

import time
from typing import Any

import requests

from tests.conftest import Stack


class Approver:
    def __init__(self, stack: Stack) -> None:
        self.base = stack.proxy.admin_url
        self.headers = {"Authorization": f"Bearer {stack.home.admin_token.read_text().strip()}"}
        self.actor = "approver-bot"  # who decides, unless a decision names someone (by=...)

    def pending(self) -> list[dict[str, Any]]:
        answer = requests.get(f"{self.base}/v1/requests", headers=self.headers, timeout=10)
        answer.raise_for_status()
        return answer.json()["requests"]

    def wait_for(self, grant_id: str, count: int = 1, timeout: float = 20.0
                 ) -> list[dict[str, Any]]:
        """The held requests of one grant, once there are `count` of them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            held = [item for item in self.pending() if item["grant"] == grant_id]
            if len(held) >= count:
                return held
            time.sleep(0.05)
        raise AssertionError(f"no held request of {grant_id} showed up")

    def decide(self, hold_id: str, action: str, **fields: Any) -> requests.Response:
        actor = {} if "by" in fields else {"X-Broker-Actor": self.actor}
        return requests.post(f"{self.base}/v1/requests/{hold_id}/{action}", json=fields,
                             headers=self.headers | actor, timeout=10)
