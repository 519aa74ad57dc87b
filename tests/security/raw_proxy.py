"""Raw-socket access to the proxy, for requests no well-behaved client would send.

Smuggling, duplicated credentials, SNI that disagrees with the CONNECT target: each needs
exact bytes on the wire, so these helpers speak HTTP/1.1 by hand, plain or inside a tunnel.
"""

from __future__ import annotations

import base64
import socket
import ssl
from dataclasses import dataclass

from tests.conftest import Stack

TIMEOUT = 10.0


def proxy_authorization(token: str, agent: str = "bot") -> str:
    return "Basic " + base64.b64encode(f"{agent}:{token}".encode()).decode()


@dataclass(frozen=True)
class RawAnswer:
    status: int  # 0 when the connection closed without an answer
    raw: bytes

    @property
    def body(self) -> bytes:
        return self.raw.partition(b"\r\n\r\n")[2]


def read_answer(sock: socket.socket) -> RawAnswer:
    """Read one response: headers, then Content-Length bytes, or until the peer closes."""
    data = b""
    sock.settimeout(TIMEOUT)
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while length is not None and len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
            data += chunk
    except (TimeoutError, ConnectionError, ssl.SSLError):
        pass
    status = 0
    if data.startswith(b"HTTP/"):
        status = int(data.split(b" ", 2)[1])
    return RawAnswer(status, data)


def plain_exchange(stack: Stack, raw: bytes) -> RawAnswer:
    """Send raw bytes to the proxy as a plain-HTTP proxy request; read one answer."""
    with socket.create_connection((stack.proxy.host, stack.proxy.port), timeout=TIMEOUT) as sock:
        sock.sendall(raw)
        return read_answer(sock)


def open_tunnel(stack: Stack, token: str, host: str, port: int, *,
                sni: str | None = None, extra_connect_headers: str = "",
                alpn: list[str] | None = None) -> ssl.SSLSocket:
    """CONNECT host:port, then TLS to the proxy's interception with ``sni`` (default: host)."""
    sock = socket.create_connection((stack.proxy.host, stack.proxy.port), timeout=TIMEOUT)
    sock.sendall((f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                  f"Proxy-Authorization: {proxy_authorization(token)}\r\n"
                  f"{extra_connect_headers}\r\n").encode())
    answer = read_answer(sock)
    if answer.status != 200:
        sock.close()
        raise ConnectionError(f"CONNECT answered {answer.status}")
    context = ssl.create_default_context(cafile=str(stack.proxy.ca_path))
    context.check_hostname = False  # the SNI under test may differ from the CONNECT host
    if alpn:
        context.set_alpn_protocols(alpn)
    return context.wrap_socket(sock, server_hostname=sni or host)


def tunnel_exchange(stack: Stack, token: str, host: str, port: int, raw: bytes, *,
                    sni: str | None = None) -> RawAnswer:
    with open_tunnel(stack, token, host, port, sni=sni) as tls:
        tls.sendall(raw)
        return read_answer(tls)


def h2_exchange(stack: Stack, token: str, host: str, port: int,
                streams: list[list[tuple[str, str]]]) -> list[tuple[int, bytes]]:
    """Send each header list as one HTTP/2 stream on one connection; (status, body) each.

    httpx offers "http/1.1" before "h2" and mitmproxy follows the client's order, so HTTP/2
    through the proxy needs a client that offers only h2.
    """
    import h2.config
    import h2.connection
    import h2.events

    with open_tunnel(stack, token, host, port, alpn=["h2"]) as tls:
        assert tls.selected_alpn_protocol() == "h2"
        connection = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        connection.initiate_connection()
        ids = []
        for headers in streams:
            stream_id = connection.get_next_available_stream_id()
            connection.send_headers(stream_id, headers, end_stream=True)
            ids.append(stream_id)
        tls.sendall(connection.data_to_send())
        status: dict[int, int] = {}
        bodies: dict[int, bytes] = dict.fromkeys(ids, b"")
        ended: set[int] = set()
        while ended != set(ids):
            data = tls.recv(65536)
            if not data:
                break
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status[event.stream_id] = int(dict(event.headers)[":status"])
                elif isinstance(event, h2.events.DataReceived):
                    bodies[event.stream_id] += event.data
                    connection.acknowledge_received_data(event.flow_controlled_length,
                                                         event.stream_id)
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    ended.add(event.stream_id)
            tls.sendall(connection.data_to_send())
        return [(status.get(i, 0), bodies[i]) for i in ids]
