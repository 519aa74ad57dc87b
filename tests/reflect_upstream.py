"""A local HTTPS upstream that reflects the secret it received, in every form the scrubber knows.

The agent sends ``X-Reflect: <placeholder>``; the proxy injects the real value; this server
answers with that value encoded as asked (``?form=``), compressed as asked (``?enc=``; ``?nest=``
compresses the body itself, under the media type ``?type=``), in its
headers too, whole or dripped one byte per chunk (``?drip=1``). ``/v1/big`` streams a long body
for the benchmark, ``/v1/range`` answers 206. ``WebSocketReflector`` echoes it over WebSocket.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import lzma
import ssl
import threading
import zipfile
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import brotli

try:
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:
    from backports import zstd  # type: ignore[import-not-found,no-redef]


def _json_u(value: bytes) -> bytes:
    return "".join(f"\\u{ord(c):04x}" for c in value.decode()).encode()


FORMS: dict[str, Callable[[bytes], bytes]] = {
    "raw": lambda v: v,
    "percent": lambda v: quote(v, safe="").encode(),
    "percent_all": lambda v: "".join(f"%{b:02X}" for b in v).encode(),
    "json_u": _json_u,
    "json_slash": lambda v: json.dumps(v.decode() + "/x")[1:-1].replace("/", "\\/").encode(),
    "hex": lambda v: v.hex().encode(),
    "hex_upper": lambda v: v.hex().upper().encode(),
    "utf16le": lambda v: v.decode().encode("utf-16-le"),
    "utf16be": lambda v: v.decode().encode("utf-16-be"),
    "b64": base64.b64encode,
    "b64url": base64.urlsafe_b64encode,
    "b64_unpadded": lambda v: base64.b64encode(v).rstrip(b"="),
    "b64_basic": lambda v: base64.b64encode(b"user:" + v),
    "b64_offset1": lambda v: base64.b64encode(b"x" + v + b"-tail-of-blob"),
    "b64_offset2": lambda v: base64.b64encode(b"xy" + v + b"-tail"),
    "b64url_offset1": lambda v: base64.urlsafe_b64encode(b"\xff" + v + b"\xfe\xfd").rstrip(b"="),
    "b64_wrapped": lambda v: base64.encodebytes(b"z" * 50 + v + b"z" * 80),
    "b64_wrapped_crlf": lambda v: base64.encodebytes(b"q" * 45 + v).replace(b"\n", b"\r\n"),
    # Pages, mail and dumps (fixed widths, so that two values of one length give one length).
    "html_dec": lambda v: "".join(f"&#{ord(c):03d};" for c in v.decode()).encode(),
    "html_hex": lambda v: "".join(f"&#x{ord(c):02X};" for c in v.decode()).encode(),
    "html_mixed": lambda v: "".join(
        (c, f"&#{ord(c):04d};", f"&#x{ord(c):04x};")[i % 3]
        for i, c in enumerate(v.decode())).encode(),
    "qp_all": lambda v: "".join(f"={b:02X}" for b in v).encode(),
    "qp_soft": lambda v: b"=\r\n".join(v[i:i + 7] for i in range(0, len(v), 7)),
    "lines_lf": lambda v: b"\n".join(v[i:i + 8] for i in range(0, len(v), 8)),
    "lines_crlf": lambda v: b"\r\n".join(v[i:i + 5] for i in range(0, len(v), 5)),
    "b32": base64.b32encode,
    "hex_colon": lambda v: b":".join(b"%02x" % b for b in v),
    "hex_space": lambda v: b" ".join(b"%02X" % b for b in v),
    "hex_dash": lambda v: b"-".join(b"%02x" % b for b in v),
    "utf32le": lambda v: v.decode().encode("utf-32-le"),
    "utf32be": lambda v: v.decode().encode("utf-32-be"),
}


def _zstd(data: bytes) -> bytes:
    return zstd.compress(data)


def _deflate(data: bytes) -> bytes:
    return zlib.compress(data)


def _zip(data: bytes) -> bytes:
    """A zip archive holding ``data`` as one deflated file (for ``?nest=zip``)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("reflected.txt", data)
    return buffer.getvalue()


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress, "deflate": _deflate, "br": brotli.compress, "zstd": _zstd,
    "zip": _zip, "xz": lzma.compress,  # not content codings: archives, for ``?nest=``
    "x-unknown": lambda data: data,  # a coding the proxy cannot undo
}


def encode_body(body: bytes, codings: list[str]) -> bytes:
    for coding in codings:  # applied left to right, as Content-Encoding lists them
        body = ENCODERS[coding](body)
    return body


def reflected_body(value: bytes, forms: list[str]) -> bytes:
    return b"".join(b"<" + name.encode() + b":" + FORMS[name](value) + b">\n" for name in forms)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        value = (self.headers.get("X-Reflect") or "").encode()
        if url.path == "/v1/big":
            self._big(int(query["size"]), value if query.get("secret") == "1" else b"",
                      query.get("length") == "1")
            return
        if url.path == "/v1/bomb":  # 1 GiB of zeros in ~32 KiB of zstd, then the secret
            body = zstd.compress(b"\0" * (1 << 30)) + zstd.compress(value)
            self.send_response(200)
            self.send_header("Content-Encoding", "zstd")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if url.path == "/v1/range":
            body = b"0123456789" + value
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 0-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        forms = query.get("form", "raw").split(",")
        if forms == ["all"]:
            forms = sorted(FORMS)
        body = reflected_body(value, forms)
        if query.get("secret") == "0":  # an answer without the value (a control)
            body = b"nothing to see here\n" * 20
        # ``nest``: the body is itself compressed (an archive), before any content coding.
        nested = [c for c in query.get("nest", "").split(",") if c]
        body = encode_body(body, nested)
        codings = [c for c in query.get("enc", "").split(",") if c]
        body = encode_body(body, codings)
        self.send_response(200, "OK " + value.decode())
        self.send_header("Content-Type", query.get("type", "text/plain"))
        # What the upstream received, as a digest: tests show it was the real value.
        self.send_header("X-Received-Digest", hashlib.sha256(value).hexdigest())
        self.server.digests.append(hashlib.sha256(value).hexdigest())
        self.send_header("Set-Cookie", "sid=" + value.decode() + "; Secure")
        self.send_header("Location", "https://example.test/cb?token=" + quote(value))
        self.send_header("WWW-Authenticate", f'Bearer error="{value.decode()}"')
        if codings:
            self.send_header("Content-Encoding", ", ".join(codings))
        if query.get("drip") == "1":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(len(body)):
                self.wfile.write(b"1\r\n" + body[i:i + 1] + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        self.wfile.flush()

    def _big(self, size: int, value: bytes, with_length: bool) -> None:
        # 64 KiB blocks of text; with a secret, each block holds it once, at a moving offset.
        block = (b"lorem ipsum dolor sit amet " * 2500)[: 64 * 1024]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if with_length:
            self.send_header("Content-Length", str(size))
        else:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent = 0
        n = 0
        while sent < size:
            chunk = block
            if value:
                at = (n * 7919) % (len(block) - len(value))
                chunk = block[:at] + value + block[at + len(value):]
            chunk = chunk[: size - sent]
            if with_length:
                self.wfile.write(chunk)
            else:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
            n += 1
        if not with_length:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: never print what was received


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    digests: list[str]  # of the values received, for controls that see no answer


class ReflectServer:
    def __init__(self, cert: Path, key: Path) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.digests = []
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    scheme = "https"

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> ReflectServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def clear(self) -> None:
        pass

    @property
    def digests(self) -> list[str]:
        """sha256 of each value received in ``X-Reflect`` (never the value)."""
        return self._server.digests


class WebSocketReflector:
    """wss:// echo: sends the Authorization it received, whole, split in two messages, base64."""

    scheme = "https"

    def __init__(self, cert: Path, key: Path) -> None:
        from websockets.sync.server import serve

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self._server = serve(self._handle, "127.0.0.1", 0, ssl=context)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @staticmethod
    def _handle(connection: Any) -> None:
        value = connection.request.headers.get("Authorization", "").removeprefix("Bearer ")
        half = len(value) // 2
        connection.send("whole:" + value)
        connection.send("split:" + value[:half])
        connection.send(value[half:] + ":end")
        connection.send(b"bin:" + value.encode())
        connection.send("b64:" + base64.b64encode(value.encode()).decode())
        for message in connection:  # then echo what the client sends
            connection.send(message)

    @property
    def port(self) -> int:
        return self._server.socket.getsockname()[1]

    def start(self) -> WebSocketReflector:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()

    def clear(self) -> None:
        pass
