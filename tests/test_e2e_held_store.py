"""Held requests live in the grant store: any process of a home holds, lists and decides them
(`run --workers 2`: held in one worker, approved through the admin API the other serves;
`mitmdump -s`: decided through the admin API of the home's `run`), a restart keeps them (the
agent's retry finds the decision), and the limits on held requests count every process's
(1,000 held at once; past that, 503 approval_queue_full)."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from benchmarks.proc_stats import children as children_of
from broker_proxy.devtools.local_pki import LocalPki
from broker_proxy.devtools.proxy_process import ProxyProcess
from broker_proxy.runtime.local_ports import free_port, wait_for_port
from tests.approval_desk_client import Approver
from tests.conftest import API_HOST, HOSTS, Stack, Upstreams, start_stack
from tests.security.raw_proxy import RawAnswer, open_tunnel, read_answer
from tests.test_e2e_mitmdump_script import ScriptStack, _mitmdump_args
from tests.test_e2e_request_approval import APPROVAL_POLICY

pytestmark = pytest.mark.e2e


def _restart(stack: Stack, pki: LocalPki, *extra: str, log: str = "proxy.log") -> None:
    """The same home and policy, a new process (or processes)."""
    stack.proxy = ProxyProcess(stack.home.root, stack.policy_file, upstream_ca=pki.ca_cert_path,
                               resolve={host: "127.0.0.1" for host in HOSTS}, env=stack.env,
                               extra_args=list(extra), log_path=stack.root / log).start()


def _stack(root: Path, pki: LocalPki, upstreams: Upstreams, *extra: str,
           webhook: str | None = None) -> Stack:
    policy = APPROVAL_POLICY.replace("TIMEOUT", "120s")
    if webhook is not None:
        policy = policy.replace("approval_timeout:",
                                f"approval_webhook: {webhook}\napproval_timeout:")
    stack = start_stack(root, pki, upstreams, policy=policy)
    upstreams.clear()
    if extra:
        stack.proxy.stop()
        _restart(stack, pki, *extra, log="workers.log")
    return stack


def _request(stack: Stack, path: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {API_HOST}:{stack.upstreams.api.port}\r\n"
            "Authorization: Bearer {{secret:api_key}}\r\n\r\n").encode()


def _tunnel(stack: Stack, token: str) -> ssl.SSLSocket:
    tls = open_tunnel(stack, token, API_HOST, stack.upstreams.api.port)
    tls.settimeout(180)  # it waits for a person
    return tls


def _records(stack: Stack, grant_id: str) -> list[dict]:
    return [r for r in map(json.loads, stack.home.audit_log.read_text().splitlines())
            if r.get("grant") == grant_id]


def _serving_pid(client: socket.socket, proxy_port: int, pids: tuple[int, ...]) -> int:
    """Which of `pids` holds the proxy's end of this client connection (from /proc)."""
    client_port = client.getsockname()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if (int(local.split(":")[1], 16) == proxy_port
                and int(remote.split(":")[1], 16) == client_port):
            inode = fields[9]
    assert inode is not None, "the proxy's end of the connection is not in /proc/net/tcp"
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    raise AssertionError("no proxy process holds the connection")


class Webhook:
    """Receives the approval webhook's POSTs."""

    def __init__(self) -> None:
        self.notices: list[dict] = []
        notices = self.notices

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                notices.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    receiver = Webhook()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture
def workers(tmp_path: Path, pki: LocalPki, upstreams: Upstreams,
            webhook: Webhook) -> Iterator[Stack]:
    stack = _stack(tmp_path, pki, upstreams, "--workers", "2", webhook=webhook.url)
    yield stack
    stack.proxy.stop()
    assert stack.api_key not in (stack.root / "workers.log").read_text(errors="replace")


def test_held_in_one_worker_approved_through_the_admin_api_the_other_serves(
        workers: Stack, webhook: Webhook) -> None:
    stack = workers
    assert stack.proxy.process is not None
    parent = stack.proxy.process.pid  # serves the admin API
    (child,) = children_of(parent)
    grant = stack.issue("api_key")
    approver = Approver(stack)
    tunnels: list[ssl.SSLSocket] = []
    by_child: ssl.SSLSocket | None = None
    deadline = time.monotonic() + 30  # the second worker may still be starting
    while by_child is None and time.monotonic() < deadline:
        # New connections until the kernel gives one to the worker without the admin API.
        tls = _tunnel(stack, grant.token)
        tunnels.append(tls)
        if _serving_pid(tls, stack.proxy.port, (parent, child)) == child:
            by_child = tls
        else:
            time.sleep(0.1)
    assert by_child is not None, "no connection reached the second worker"
    try:
        by_child.sendall(_request(stack, "/v1/held-in-worker"))
        [item] = approver.wait_for(grant.grant.id)
        assert item["request"]["path"] == "/v1/held-in-worker" and item["state"] == "pending"
        # The worker that held it sends the webhook, linking to the console the other serves.
        deadline = time.monotonic() + 10
        while not webhook.notices and time.monotonic() < deadline:
            time.sleep(0.05)
        [notice] = webhook.notices
        assert notice["request"]["id"] == item["id"]
        assert notice["console"].startswith(stack.proxy.admin_url)
        decided = approver.decide(item["id"], "approve", shown_digest=item["shown_digest"])
        assert decided.status_code == 200, decided.text
        started = time.monotonic()
        answer = read_answer(by_child)
        assert answer.status == 200, answer.raw[:300]
        assert time.monotonic() - started < 3  # the worker polls the store (every 0.2 s)
    finally:
        for tls in tunnels:
            tls.close()
    [sent] = stack.upstreams.api.requests
    assert sent.path == "/v1/held-in-worker"
    assert sent.header("Authorization") == f"Bearer {stack.api_key}"
    events = [(r["event"], r.get("decision"), r.get("by")) for r in _records(stack, grant.grant.id)]
    assert ("request_approved", "allow", "admin-api:approver-bot") in events
    assert ("request", "held", None) in events and ("request", "allow", None) in events


def test_a_restart_keeps_held_requests_and_the_retry_finds_the_decision(
        tmp_path: Path, pki: LocalPki, upstreams: Upstreams) -> None:
    stack = _stack(tmp_path, pki, upstreams)
    try:
        grant = stack.issue("api_key")
        approver = Approver(stack)
        answers: dict[str, RawAnswer] = {}

        def agent(path: str) -> None:
            with _tunnel(stack, grant.token) as tls:
                tls.sendall(_request(stack, path))
                answers[path] = read_answer(tls)

        threads = [threading.Thread(target=agent, args=(path,)) for path in ("/v1/yes", "/v1/no")]
        for thread in threads:
            thread.start()
        held = {item["request"]["path"]: item for item in approver.wait_for(grant.grant.id, 2)}
        assert stack.proxy.stop() == 0
        for thread in threads:
            thread.join(timeout=15)
        for path in ("/v1/yes", "/v1/no"):
            assert answers[path].status == 503
            assert json.loads(answers[path].body)["error"] == "approval_interrupted"
        _restart(stack, pki)
        approver = Approver(stack)
        # The new process lists what the old one held, and a person decides it.
        assert {item["id"] for item in approver.pending()} == {i["id"] for i in held.values()}
        assert approver.decide(held["/v1/yes"]["id"], "approve").status_code == 200
        assert approver.decide(held["/v1/no"]["id"], "deny", reason="not today").status_code == 200
        with _tunnel(stack, grant.token) as tls:  # the agent sends it again
            tls.sendall(_request(stack, "/v1/yes"))
            assert read_answer(tls).status == 200
            tls.sendall(_request(stack, "/v1/no"))
            refused = read_answer(tls)
        assert refused.status == 403
        assert json.loads(refused.body)["error"] == "request_denied"
        assert "not today" in json.loads(refused.body)["message"]
        [sent] = stack.upstreams.api.requests
        assert sent.path == "/v1/yes" and sent.header("Authorization") == f"Bearer {stack.api_key}"
        # The approval was spent by the retry: the same request once more waits for a person.
        with _tunnel(stack, grant.token) as tls:
            tls.sendall(_request(stack, "/v1/yes"))
            [again] = approver.wait_for(grant.grant.id)
            assert again["id"] != held["/v1/yes"]["id"]
        events = [(r["event"], r.get("hold")) for r in _records(stack, grant.grant.id)]
        assert ("request_approved", held["/v1/yes"]["id"]) in events
        assert ("request_denied", held["/v1/no"]["id"]) in events
    finally:
        stack.proxy.stop()


def test_1000_held_requests_across_two_workers_then_the_queue_is_full(
        workers: Stack) -> None:
    stack = workers
    grants = [stack.issue("api_key") for _ in range(11)]
    approver = Approver(stack)

    def hold(args: tuple[int, int]) -> ssl.SSLSocket:
        index, number = args
        tls = _tunnel(stack, grants[index].token)
        tls.sendall(_request(stack, f"/v1/many/{number}"))
        return tls

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=32) as pool:
        tunnels = list(pool.map(hold, [(i, n) for i in range(10) for n in range(100)]))
    try:
        deadline = time.monotonic() + 120
        while len(pending := approver.pending()) < 1000 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(pending) == 1000
        held_in = time.monotonic() - started
        # Past the limits (100 of one grant, 1,000 in all), counted across both workers.
        for index in (0, 10):
            with _tunnel(stack, grants[index].token) as tls:
                tls.sendall(_request(stack, "/v1/one-too-many"))
                full = read_answer(tls)
            assert full.status == 503, full.raw[:300]
            assert json.loads(full.body)["error"] == "approval_queue_full"
        assert len(approver.pending()) == 1000
        print(f"1,000 held requests across 2 workers in {held_in:.1f} s")
    finally:
        assert stack.proxy.stop() == 0
        statuses = []
        for tls in tunnels:
            try:
                statuses.append(read_answer(tls).status)
            except OSError:
                statuses.append(0)
            tls.close()
    assert statuses == [503] * 1000
    assert stack.upstreams.api.requests == []


def test_mitmdump_script_holds_and_the_run_process_of_its_home_decides(
        tmp_path: Path, pki: LocalPki, upstreams: Upstreams) -> None:
    stack = _stack(tmp_path, pki, upstreams)  # `broker-proxy run`: the admin API
    port = free_port()
    confdir = tmp_path / "confdir"
    log = (tmp_path / "mitmdump.log").open("wb")
    process = subprocess.Popen(_mitmdump_args(stack, tmp_path, port, "-q"), stdout=log,
                               stderr=subprocess.STDOUT, env=stack.env,
                               stdin=subprocess.DEVNULL)
    try:
        wait_for_port(port, process)
        script = Stack(**{**stack.__dict__, "proxy": ScriptStack(
            port, confdir / "mitmproxy-ca-cert.pem")})
        grant = stack.issue("api_key")
        approver = Approver(stack)
        with _tunnel(script, grant.token) as tls:
            tls.sendall(_request(stack, "/v1/held-by-mitmdump"))
            [item] = approver.wait_for(grant.grant.id)
            assert item["request"]["path"] == "/v1/held-by-mitmdump"
            assert approver.decide(item["id"], "approve").status_code == 200
            answer = read_answer(tls)
        assert answer.status == 200, answer.raw[:300]
        [sent] = stack.upstreams.api.requests
        assert sent.header("Authorization") == f"Bearer {stack.api_key}"
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        stack.proxy.stop()
    assert stack.api_key not in (tmp_path / "mitmdump.log").read_text(errors="replace")
