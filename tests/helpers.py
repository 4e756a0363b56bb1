"""Small helpers more than one test module uses, too small for a fake of their own."""

from __future__ import annotations

import asyncio
import socket


def free_port() -> int:
    """A port of the host's loopback that nothing listened on a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Listener:
    """A TCP server on the host's loopback that records every connection it gets (and
    answers it as HTTP, so that curl ends at once): the `listener` fixture."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.port = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.received.append(await reader.read(65536))
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()
