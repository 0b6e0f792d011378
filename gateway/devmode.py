"""Pieces of ``gateway dev``: an embedded PostgreSQL and the ``/dev/outbox`` pages.

The outbox pages show what the sandbox sent. Every value on them came from a job, so it is
user-controlled: each one is escaped with :func:`html.escape`, and email HTML is only ever shown
inside a sandboxed ``<iframe srcdoc>`` (no scripts, no same-origin access).
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
from aiohttp import web

from adapters.sandbox import Outbox

# What a data directory path may hold so pgserver can start postgres on it (see below).
_SAFE_PATH = re.compile(r"[\w/.,:+@=~-]+")


def start_embedded_postgres(data_dir: Path) -> tuple[str, Any]:
    """Start PostgreSQL (``pgserver``) on ``data_dir / "pgdata"``; return ``(dsn, handle)``.

    The data is kept across runs; a server left running by an earlier run is reused. The DSN
    points asyncpg at pgserver's unix socket. Blocks for the start (initdb on the first run).
    """
    # pgserver is a dev dependency only: imported here so production never needs it. Its
    # platformdirs import warns when XDG_RUNTIME_DIR is unset, which says nothing useful here.
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        from pgserver.postgres_server import get_server

    data_dir = data_dir.expanduser().resolve()
    if not _SAFE_PATH.fullmatch(str(data_dir)):
        # pgserver passes pgdata to postgres unquoted (``-o "-k <dir>"``, run by pg_ctl through
        # /bin/sh): a space splits the argument, a "&" or ";" ends the command. Refuse up front
        # rather than fail with a postgres log line about an invalid argument.
        raise ValueError(
            "embedded PostgreSQL needs a data directory path of letters, digits and / . _ - "
            f"+ @ : , = ~ only, got {str(data_dir)!r}"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    # Root needs no workaround: postgres refuses to run as root, so pgserver itself creates a
    # system user ``pgserver`` (useradd), chowns pgdata to it, runs initdb and pg_ctl as that
    # user, and adds g+rx,o+rx to every parent directory of pgdata so that user can reach it.
    # cleanup_mode="stop": stop the server when the last handle goes (at exit at the latest) and
    # keep pgdata; "delete" would wipe the data, None would leave the server running.
    server = get_server(data_dir / "pgdata", cleanup_mode="stop")
    info = server.get_postmaster_info()
    if info.socket_dir is None:  # Windows: pgserver listens on localhost TCP instead
        return str(server.get_uri()), server
    # Built here rather than taken from get_uri(), which pastes the socket path in unencoded and
    # leaves out the port, which names the socket file (.s.PGSQL.<port>).
    query = urlencode({"host": os.fspath(info.socket_dir), "port": info.port or 5432})
    return f"postgresql://postgres@/postgres?{query}", server


def stop_embedded_postgres(handle: Any) -> None:
    """Stop the server started by :func:`start_embedded_postgres`; its data stays on disk."""
    handle.cleanup()


def outbox_routes(outbox: Outbox) -> list[web.RouteDef]:
    """``GET /dev/outbox`` (an HTML page) and ``GET /dev/outbox.json``, newest first."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(
            text=render_outbox(outbox.records(), host=request.host), content_type="text/html"
        )

    async def as_json(request: web.Request) -> web.Response:
        body = orjson.dumps(outbox.records(), default=str)
        return web.Response(body=body, content_type="application/json")

    return [web.get("/dev/outbox", page), web.get("/dev/outbox.json", as_json)]


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2rem auto;max-width:60rem;color:#222}
h1{font-size:1.4rem}.msg{border:1px solid #ccc;border-radius:6px;padding:.8rem 1rem;margin:1rem 0}
.meta{color:#555;font-size:12px}.meta b{color:#222}
.tag{display:inline-block;padding:0 .5em;border-radius:3px;background:#e4e4ff;font-weight:600}
pre{background:#f6f6f6;padding:.6rem;white-space:pre-wrap;word-break:break-word}
iframe{width:100%;height:320px;border:1px solid #ddd;background:#fff}
"""


def _e(value: object) -> str:
    """``value`` as text safe anywhere in the page, attribute values included."""
    return "" if value is None else html.escape(str(value), quote=True)


def render_outbox(records: list[dict[str, Any]], *, host: str) -> str:
    """The outbox page for ``records`` (already newest first). ``host`` goes in the example."""
    if records:
        content = "\n".join(_render_record(record) for record in records)
    else:
        content = _render_empty(host)
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta http-equiv="refresh" content="5">'
        f"<title>Outbox ({len(records)})</title><style>{_STYLE}</style></head>"
        f"<body><h1>Outbox: {len(records)} sent</h1>"
        '<p class=meta>Newest first; refreshes every 5 s. As JSON: <a href="/dev/outbox.json">'
        "/dev/outbox.json</a></p>\n"
        f"{content}\n</body></html>\n"
    )


def _render_empty(host: str) -> str:
    example = (
        f"curl -X POST http://{host}/v1/messages \\\n"
        '  -H "Authorization: Bearer $GATEWAY_API_TOKEN" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        """  -d '{"id": "hello-1", "channel": "email", "to": {"address": "you@example.com"},"""
        """ "content": {"subject": "Hello", "text": "It works"}}'"""
    )
    return (
        "<p>Nothing sent yet. Send a message and it shows up here:</p>"
        f"<pre>{_e(example)}</pre>"
        "<p class=meta>To see failures, send to an address containing <code>fail-transient</code>"
        " or <code>fail-permanent</code>.</p>"
    )


def _render_record(record: dict[str, Any]) -> str:
    channel = record.get("channel")
    meta = (
        f"<div class=meta><span class=tag>{_e(channel)}</span> "
        f"<b>to</b> {_e(record.get('to'))} · <b>from</b> {_e(record.get('from') or '(default)')}"
        f" · <b>sent</b> {_e(record.get('sent_at'))} · <b>message id</b> "
        f"{_e(record.get('message_id'))}</div>"
    )
    if channel == "email":
        body = _render_email(record)
    elif channel == "sms":
        body = _render_sms(record)
    elif channel == "push":
        body = _render_push(record)
    else:
        body = f"<pre>{_e(_pretty(record))}</pre>"
    return f'<div class="msg">{meta}{body}</div>'


def _render_email(record: dict[str, Any]) -> str:
    parts = [f"<h2>{_e(record.get('subject'))}</h2>"]
    if record.get("text") is not None:
        parts.append(f"<h3>Text</h3><pre>{_e(record['text'])}</pre>")
    if record.get("html") is not None:
        # An empty ``sandbox`` attribute: no scripts, forms, popups or same-origin access, so
        # the message's HTML renders as the recipient would see it without running anything.
        parts.append(
            f'<h3>HTML</h3><iframe sandbox srcdoc="{_e(record["html"])}" '
            'title="HTML part" referrerpolicy="no-referrer"></iframe>'
        )
    if record.get("headers"):
        parts.append(f"<h3>Headers</h3><pre>{_e(_pretty(record['headers']))}</pre>")
    return "".join(parts)


def _render_sms(record: dict[str, Any]) -> str:
    text = str(record.get("body") or "")
    return f"<pre>{_e(text)}</pre><p class=meta>{len(text)} characters</p>"


def _render_push(record: dict[str, Any]) -> str:
    silent = " (silent)" if record.get("silent") else ""
    return (
        f"<h2>{_e(record.get('title') or '(no title)')}{silent}</h2>"
        f"<p>{_e(record.get('body'))}</p>"
        f"<h3>Data</h3><pre>{_e(_pretty(record.get('data')))}</pre>"
    )


def _pretty(value: object) -> str:
    options = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
    return orjson.dumps(value, default=str, option=options).decode()


DEV_TOKEN = "dev-token-not-for-production"


async def run_dev(*, port: int | None = None) -> int:
    """``gateway dev``: embedded PostgreSQL, the in-process queue and sandbox adapters.

    Environment variables still apply (``GATEWAY_API_TOKEN``, ``GATEWAY_HTTP_PORT`` …), but the
    database and the queue are always the embedded ones, and the API listens on 127.0.0.1 only.
    """
    import asyncio

    from adapters.sandbox import SandboxSender
    from gateway.app import Gateway
    from gateway.logging import configure_logging
    from gateway.memqueue import MemoryBroker
    from gateway.migrate import migrate
    from gateway.settings import Settings

    os.environ.setdefault("GATEWAY_API_TOKEN", DEV_TOKEN)
    overrides: dict[str, Any] = {"http_host": "127.0.0.1"}
    if port is not None:
        overrides["http_port"] = port
    settings = Settings.load(**overrides)
    data_dir = settings.dev_data_dir
    dsn, handle = await asyncio.to_thread(start_embedded_postgres, data_dir)
    try:
        settings = settings.model_copy(update={"database_url": dsn})
        configure_logging(settings.log_format, settings.log_level)
        await migrate(dsn)
        outbox = Outbox(path=data_dir / "outbox.jsonl")
        senders = {
            key: SandboxSender(channel=key.partition(":")[0], outbox=outbox)
            for key in ("email", "sms", "push:apns", "push:fcm")
        }
        gateway = Gateway(
            settings,
            broker=MemoryBroker(prefetch=settings.prefetch),
            senders=senders,
            extra_routes=outbox_routes(outbox),
            name="gateway-dev",
        )
        await gateway.run_until_signalled(on_started=lambda: _banner(gateway, outbox))
    finally:
        await asyncio.to_thread(stop_embedded_postgres, handle)
    return 0


def _banner(gateway: Any, outbox: Outbox) -> None:
    """Tell a newcomer where to look and what to type."""
    import sys

    base = f"http://127.0.0.1:{gateway.port}"
    token = gateway.settings.token
    example = (
        f"curl -s -X POST {base}/v1/messages -H 'Authorization: Bearer {token}' "
        "-H 'Content-Type: application/json' -d '{\"id\": \"hello-1\", \"channel\": \"email\", "
        "\"to\": {\"address\": \"jane@example.com\"}, \"content\": {\"subject\": "
        "\"Hello {{ name }}\", \"text\": \"Hi {{ name }}!\"}, \"data\": {\"name\": \"Jane\"}}'"
    )
    sys.stderr.write(
        "\n  gateway dev is running (embedded PostgreSQL, in-process queue, sandbox adapters)\n"
        f"  API       {base}/v1/messages   (bearer token: {token})\n"
        f"  outbox    {base}/dev/outbox   (also written to {outbox.path})\n"
        f"  try it    {example}\n\n"
    )
