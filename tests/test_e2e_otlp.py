"""`run --otlp-endpoint`: the real proxy ships its audit log to a local OTLP/HTTP receiver.

The receiver is a small HTTP server that decodes ExportLogsServiceRequest protobufs. It can be
stopped (connection refused) or made to hang (accepts and never answers): requests through the
proxy stay fast, failed sends are counted, and once the receiver is back every record arrives.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

from broker_proxy.audit.log import AuditLog
from broker_proxy.audit.otlp import OtlpShipper
from broker_proxy.devtools.local_pki import LocalPki
from tests.conftest import API_HOST, Stack, Upstreams, start_stack
from tests.e2e_clients import CLIENTS

pytestmark = pytest.mark.e2e

API_AUTH = {"Authorization": "Bearer {{secret:api_key}}"}


class Receiver:
    """An OTLP/HTTP logs endpoint on a fixed port that can be stopped, hung and restarted."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.bodies: dict[int, dict] = {}
        self.resources: list[dict] = []
        self.hang = threading.Event()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if receiver.hang.is_set():
                    time.sleep(30)  # a collector that took the request and never answers
                    return
                assert self.path == "/v1/logs"
                request = ExportLogsServiceRequest.FromString(data)
                with receiver._lock:
                    for resource_logs in request.resource_logs:
                        receiver.resources.append(
                            {kv.key: kv.value.string_value
                             for kv in resource_logs.resource.attributes})
                        for scope_logs in resource_logs.scope_logs:
                            for entry in scope_logs.log_records:
                                body = json.loads(entry.body.string_value)
                                receiver.seqs.append(body["seq"])
                                receiver.bodies[body["seq"]] = body
                reply = ExportLogsServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def received(self) -> list[int]:
        with self._lock:
            return list(self.seqs)


@pytest.fixture
def shipped(tmp_path_factory: pytest.TempPathFactory, pki: LocalPki,
            upstreams: Upstreams) -> Iterator[tuple[Stack, Receiver]]:
    receiver = Receiver().start()
    stack = start_stack(tmp_path_factory.mktemp("otlp"), pki, upstreams,
                        extra_args=("--otlp-endpoint", f"http://127.0.0.1:{receiver.port}"))
    yield stack, receiver
    stack.proxy.stop()
    receiver.hang.clear()
    receiver.stop()


def audit_seqs(stack: Stack) -> list[int]:
    return [record["seq"] for record in AuditLog.read_records(stack.home.audit_log)]


def wait_until(condition, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def metric(stack: Stack, name: str) -> float:
    text = requests.get(stack.proxy.metrics_url, timeout=5).text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def use(stack: Stack, token: str, count: int) -> float:
    """Make `count` secret-carrying requests; return the slowest one's seconds."""
    slowest = 0.0
    for index in range(count):
        started = time.monotonic()
        answer = CLIENTS["curl"](stack, token, "GET",
                                 stack.url(stack.upstreams.api, API_HOST, f"/v1/{index}"),
                                 headers=API_AUTH)
        slowest = max(slowest, time.monotonic() - started)
        assert answer.status == 200
    return slowest


def test_audit_records_reach_the_collector_and_none_is_lost_while_it_is_away(
        shipped: tuple[Stack, Receiver]) -> None:
    stack, receiver = shipped
    grant = stack.issue("api_key")
    use(stack, grant.token, 3)
    assert wait_until(lambda: set(audit_seqs(stack)) <= set(receiver.received()))
    first = receiver.bodies[0]
    assert first["event"] in ("policy_loaded", "proxy_started") and "mac" in first
    assert receiver.resources[0]["service.name"] == "broker-proxy"

    # A collector that hangs: requests must not wait for it.
    receiver.hang.set()
    slowest_hung = use(stack, grant.token, 4)
    # A collector that is gone (connection refused).
    receiver.stop()
    slowest_gone = use(stack, grant.token, 4)
    assert wait_until(lambda: metric(stack, "broker_otlp_records_unsent_total") > 0, 30)
    # Each request took far less than the exporter's 5 s send timeout it would have waited.
    assert slowest_hung < 4 and slowest_gone < 4, (slowest_hung, slowest_gone)

    receiver.hang.clear()
    receiver.start()  # same port: the collector comes back
    use(stack, grant.token, 2)
    assert wait_until(lambda: set(audit_seqs(stack)) <= set(receiver.received()), 90), (
        sorted(set(audit_seqs(stack)) - set(receiver.received())))
    received = receiver.received()
    # Every record, in order; the hung batch is the only one that may arrive twice.
    assert sorted(set(received)) == list(range(max(received) + 1))
    for body in receiver.bodies.values():
        assert stack.api_key not in json.dumps(body)
    sent = metric(stack, "broker_otlp_records_sent_total")
    assert sent >= len(set(audit_seqs(stack)))


def test_a_restarted_shipper_goes_on_from_the_saved_position(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit.log", tmp_path / "audit.key")
    for index in range(300):
        log.append("request", decision="allow", reason="allowed", method="GET",
                   scheme="https", host="pypi.org", port=443, path=f"/{index}")
    receiver = Receiver().start()
    counts = {"sent": 0, "unsent": 0}

    def shipper() -> OtlpShipper:
        return OtlpShipper(tmp_path / "audit.log", tmp_path / "otlp.position",
                           f"http://127.0.0.1:{receiver.port}",
                           on_sent=lambda n: counts.__setitem__("sent", counts["sent"] + n),
                           on_unsent=lambda n: counts.__setitem__("unsent",
                                                                  counts["unsent"] + n))
    try:
        first = shipper().start()
        assert wait_until(lambda: len(receiver.received()) == 300, 30)
        first.stop()
        assert json.loads((tmp_path / "otlp.position").read_text()) == {"next_seq": 300}
        receiver.stop()
        for index in range(50):
            log.append("request", decision="deny", reason="destination_not_granted",
                       method="GET", scheme="https", host="x.example", port=443, path=f"/{index}")
        down = shipper().start()
        assert wait_until(lambda: counts["unsent"] > 0, 30)
        down.stop()
        receiver.start()
        again = shipper().start()
        assert wait_until(lambda: len(receiver.received()) == 350, 30)
        again.stop()
    finally:
        log.close()
        receiver.stop()
    assert receiver.received() == list(range(350))  # no loss, no repeat
    assert counts["sent"] == 350
