"""Connections are read up to 256 KiB at a time, never waiting for more than is there."""

from __future__ import annotations

import asyncio

import pytest
from broker_proxy.addons import mitmproxy_patches, socket_reads
from broker_proxy.addons.mitmproxy_compat import IncompatibleMitmproxy
from mitmproxy.proxy.server import ConnectionHandler


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=2 * len(data) + 1)  # limit: all of it stays buffered
    reader.feed_data(data)
    socket_reads.widen(reader)
    return reader


def test_a_read_takes_what_is_buffered_up_to_the_read_size() -> None:
    async def reads() -> list[int]:
        reader = _reader(b"x" * (socket_reads.READ_SIZE + 1000))
        reader.feed_eof()
        return [len(await reader.read(65535)) for _ in range(3)]

    assert asyncio.run(reads()) == [socket_reads.READ_SIZE, 1000, 0]


def test_a_read_returns_at_once_with_what_arrived_so_server_sent_events_are_not_delayed() -> None:
    async def first_event() -> bytes:
        reader = _reader(b"data: 1\n\n")  # no EOF: more may come, later
        return await asyncio.wait_for(reader.read(65535), timeout=5)

    assert asyncio.run(first_event()) == b"data: 1\n\n"


def test_only_a_plain_stream_reader_is_widened() -> None:
    class Other(asyncio.StreamReader):
        pass

    async def widened() -> type:
        other = Other()
        socket_reads.widen(other)
        socket_reads.widen(None)  # a connection without a reader yet: nothing to do
        return type(other)

    assert asyncio.run(widened()) is Other


def test_the_proxy_installs_it_and_only_once() -> None:
    mitmproxy_patches.install()  # what ``broker-proxy run`` and the ``mitmdump -s`` entry call
    wrapped = ConnectionHandler.handle_connection
    socket_reads.install()
    assert ConnectionHandler.handle_connection is wrapped
    assert getattr(wrapped, "_broker_proxy_reads_wide", False)


def test_install_refuses_to_start_without_the_connection_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ConnectionHandler, "handle_connection", None)
    with pytest.raises(IncompatibleMitmproxy):
        socket_reads.install()
