"""The three clients the end-to-end tests drive: curl, requests and httpx.

Each takes the same arguments and returns (status, headers, body) so one test body can run
against all of them.
"""

from __future__ import annotations

import json
import ssl
import subprocess
from typing import NamedTuple

import httpx
import requests

from tests.conftest import Stack, curl_path


class Answer(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def via_curl(stack: Stack, token: str, method: str, url: str,
             headers: dict[str, str] | None = None, body: bytes | None = None) -> Answer:
    args = [curl_path(), "-sS", "--max-time", "15", "-x", stack.proxy.proxy_url(token, "bot"),
            "--cacert", str(stack.proxy.ca_path), "-X", method, "-D", "-", url]
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    if body is not None:
        args += ["--data-binary", "@-"]
    done = subprocess.run(args, input=body, capture_output=True, timeout=30)
    if done.returncode != 0:
        return Answer(-done.returncode, {}, done.stderr)
    raw = done.stdout
    # Skip the proxy's "200 Connection established" block(s).
    while raw.startswith(b"HTTP/1.1 200 Connection established") or raw.startswith(
            b"HTTP/1.0 200 Connection established"):
        raw = raw.split(b"\r\n\r\n", 1)[1]
    head, _, content = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    parsed = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return Answer(status, parsed, content)


def via_requests(stack: Stack, token: str, method: str, url: str,
                 headers: dict[str, str] | None = None, body: bytes | None = None) -> Answer:
    proxy = stack.proxy.proxy_url(token, "bot")
    try:
        response = requests.request(method, url, headers=headers, data=body, timeout=15,
                                    proxies={"http": proxy, "https": proxy},
                                    verify=str(stack.proxy.ca_path))
    except requests.exceptions.ProxyError as error:  # a refused CONNECT
        return Answer(-1, {}, str(error).encode())
    return Answer(response.status_code, {k.lower(): v for k, v in response.headers.items()},
                  response.content)


def via_httpx(stack: Stack, token: str, method: str, url: str,
              headers: dict[str, str] | None = None, body: bytes | None = None) -> Answer:
    context = ssl.create_default_context(cafile=str(stack.proxy.ca_path))
    with httpx.Client(proxy=stack.proxy.proxy_url(token, "bot"), verify=context,
                      timeout=15) as client:
        try:
            response = client.request(method, url, headers=headers, content=body)
        except httpx.ProxyError as error:  # a refused CONNECT
            return Answer(-1, {}, str(error).encode())
    return Answer(response.status_code, {k.lower(): v for k, v in response.headers.items()},
                  response.content)


CLIENTS = {"curl": via_curl, "requests": via_requests, "httpx": via_httpx}
