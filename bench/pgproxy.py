"""A counting TCP proxy in front of PostgreSQL (diagnostic, ``--pg-proxy``): what each gateway
process asks the database, without pg_stat_statements (not preloaded on this server).

It reads only the client -> server half of the wire protocol: each frontend message is a type
byte and a length. A round trip is one ``Sync`` (extended protocol: Parse/Bind/Execute... Sync)
or one simple ``Query``: each ends with the server's ReadyForQuery, which the client waits for.
Executions are counted per statement text (``Bind`` names the statement ``Parse`` prepared).
The gateway workers connect to it with ``sslmode=disable`` so the stream can be read.

It adds a hop and costs CPU in the benchmark process, so timings taken through it are not the
headline figures: use it for the counts.
"""

from __future__ import annotations

import asyncio
import re
import struct
from collections import Counter
from typing import Any

_SPACE = re.compile(r"\s+")


def _label(sql: str) -> str:
    text = _SPACE.sub(" ", sql).strip()
    return text[:90]


class _Connection:
    def __init__(self, proxy: "PgProxy") -> None:
        self.proxy = proxy
        self.buffer = bytearray()
        self.started = False
        self.statements: dict[bytes, str] = {}

    def feed(self, data: bytes) -> None:
        buf = self.buffer
        buf.extend(data)
        while True:
            if not self.started:
                if len(buf) < 8:
                    return
                length = struct.unpack_from("!I", buf, 0)[0]
                if len(buf) < length:
                    return
                code = struct.unpack_from("!I", buf, 4)[0]
                del buf[:length]
                if code not in (80877103, 80877104):  # SSLRequest / GSSENCRequest come first
                    self.started = True
                continue
            if len(buf) < 5:
                return
            kind = buf[0]
            length = struct.unpack_from("!I", buf, 1)[0]
            if len(buf) < 1 + length:
                return
            self._message(kind, bytes(buf[5:1 + length]))
            del buf[:1 + length]

    def _message(self, kind: int, body: bytes) -> None:
        stats = self.proxy.counts
        stats[chr(kind)] += 1
        if kind == ord("Q"):
            text = _label(body.rstrip(b"\0").decode(errors="replace"))
            self.proxy.simple[text] += 1
        elif kind == ord("P"):
            name, _, rest = body.partition(b"\0")
            query = rest.partition(b"\0")[0].decode(errors="replace")
            self.statements[name] = _label(query)
            self.proxy.parses[_label(query)] += 1
        elif kind == ord("B"):
            _portal, _, rest = body.partition(b"\0")
            name = rest.partition(b"\0")[0]
            self.proxy.executions[self.statements.get(name, "?")] += 1


class PgProxy:
    def __init__(self, upstream_host: str = "127.0.0.1", upstream_port: int = 5432) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.counts: Counter[str] = Counter()
        self.simple: Counter[str] = Counter()
        self.parses: Counter[str] = Counter()
        self.executions: Counter[str] = Counter()
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def reset(self) -> None:
        self.counts.clear()
        self.simple.clear()
        self.parses.clear()
        self.executions.clear()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        state = _Connection(self)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: bool) -> None:
            try:
                while data := await src.read(65536):
                    if count:
                        state.feed(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))
        finally:
            if task is not None:
                self._tasks.discard(task)

    def snapshot(self) -> dict[str, Any]:
        round_trips = self.counts["S"] + self.counts["Q"]
        return {
            "round_trips": round_trips,
            "messages": dict(self.counts),
            "executions_by_statement": dict(self.executions.most_common(20)),
            "simple_queries": dict(self.simple.most_common(10)),
            "parses": sum(self.parses.values()),
            "connections": self.connections,
        }

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
