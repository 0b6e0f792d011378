"""Dev mode: the outbox pages and the embedded PostgreSQL."""

from __future__ import annotations

import html
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from adapters.base import OutboundEmail, OutboundPush, OutboundSms
from adapters.sandbox import Outbox, SandboxSender
from gateway.devmode import outbox_routes, start_embedded_postgres, stop_embedded_postgres

SCRIPT = "<script>alert(1)</script>"
# Tries to close the srcdoc attribute and add a handler of its own.
BREAKOUT = '"><img src=x onerror="alert(2)">'


@pytest.fixture
async def client_for() -> AsyncIterator[Any]:
    """Serves the outbox routes of a given outbox; servers are closed after the test."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def make(outbox: Outbox) -> TestClient[web.Request, web.Application]:
        app = web.Application()
        app.add_routes(outbox_routes(outbox))
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def _fill(outbox: Outbox) -> None:
    await SandboxSender(channel="email", outbox=outbox).send(
        OutboundEmail(
            message_id="first-email",
            to="ada@example.com",
            from_="noreply@example.com",
            subject=f"Subject {SCRIPT}",
            text=f"Text {SCRIPT}",
            html=f"<p>Hello</p>{SCRIPT}{BREAKOUT}",
        )
    )
    await SandboxSender(channel="sms", outbox=outbox).send(
        OutboundSms(message_id="second-sms", to="+447700900123", from_=None, body=f"Hi {SCRIPT}")
    )
    await SandboxSender(channel="push", outbox=outbox).send(
        OutboundPush(
            message_id="third-push",
            to="device-token",
            title=f"T {SCRIPT}",
            body="B",
            data={"k": SCRIPT},
        )
    )


async def test_outbox_page_escapes_every_user_value(client_for: Any) -> None:
    """A <script> in a subject, text, HTML, SMS body or push payload reaches the page escaped."""
    outbox = Outbox()
    await _fill(outbox)
    client = await client_for(outbox)
    response = await client.get("/dev/outbox")
    assert response.status == 200
    assert response.content_type == "text/html"
    page = await response.text()
    assert "<script" not in page.lower()
    assert "<img" not in page.lower()
    assert f"Subject {html.escape(SCRIPT)}" in page
    assert f"<pre>Text {html.escape(SCRIPT)}</pre>" in page
    # The HTML part is shown only inside a sandboxed iframe, escaped into its srcdoc attribute.
    srcdoc = html.escape(f"<p>Hello</p>{SCRIPT}{BREAKOUT}", quote=True)
    assert f'<iframe sandbox srcdoc="{srcdoc}"' in page
    assert page.count("<iframe") == 1
    assert f"<pre>Hi {html.escape(SCRIPT)}</pre>" in page
    assert f"{len('Hi ' + SCRIPT)} characters" in page
    assert "&quot;k&quot;: &quot;&lt;script&gt;" in page
    assert '<meta http-equiv="refresh" content="5">' in page


async def test_outbox_page_lists_newest_first(client_for: Any) -> None:
    """The most recent message comes first on the page."""
    outbox = Outbox()
    await _fill(outbox)
    page = await (await (await client_for(outbox)).get("/dev/outbox")).text()
    positions = [page.index(mid) for mid in ("third-push", "second-sms", "first-email")]
    assert positions == sorted(positions)


async def test_empty_outbox_shows_a_hint(client_for: Any) -> None:
    """With nothing sent, the page explains how to send something, with a curl example."""
    page = await (await (await client_for(Outbox())).get("/dev/outbox")).text()
    assert "Nothing sent yet" in page
    assert "curl -X POST http://127.0.0.1:" in page
    assert "/v1/messages" in page


async def test_outbox_json_lists_records_newest_first(client_for: Any) -> None:
    """/dev/outbox.json returns the records as JSON, newest first."""
    outbox = Outbox()
    await _fill(outbox)
    response = await (await client_for(outbox)).get("/dev/outbox.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    records = await response.json()
    assert [r["message_id"] for r in records] == ["third-push", "second-sms", "first-email"]
    assert records == outbox.records()


async def test_embedded_postgres_starts_serves_and_keeps_data(tmp_path: Path) -> None:
    """Embedded PostgreSQL starts, answers asyncpg, stops, and keeps its data for the next start."""
    dsn, handle = start_embedded_postgres(tmp_path)
    try:
        assert dsn.startswith("postgresql://")
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT 1") == 1
            await conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
        finally:
            await conn.close()
    finally:
        stop_embedded_postgres(handle)
    with pytest.raises(OSError):
        await asyncpg.connect(dsn, timeout=5)

    dsn, handle = start_embedded_postgres(tmp_path)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT x FROM kept") == 42
        finally:
            await conn.close()
    finally:
        stop_embedded_postgres(handle)
    assert (tmp_path / "pgdata" / "PG_VERSION").exists()


@pytest.mark.parametrize("name", ["with space", "a&b", "semi;colon"])
def test_embedded_postgres_refuses_a_path_pgserver_would_break_on(
    tmp_path: Path, name: str
) -> None:
    """A data directory with a space or shell metacharacter is refused before anything starts."""
    with pytest.raises(ValueError, match="data directory path"):
        start_embedded_postgres(tmp_path / name)
    assert not (tmp_path / name).exists()
