"""The ``gateway`` command: ``serve``, ``migrate``, ``dev``, ``schema`` and ``import-users``.

Settings are read here, once, and handed to everything else.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any, Coroutine, Sequence

import orjson

from gateway.settings import ConfigError, Settings


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, except on Windows
        return asyncio.run(coro)
    return uvloop.run(coro)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the consumer and the HTTP API")
    only = serve.add_mutually_exclusive_group()
    only.add_argument("--consumer-only", action="store_true", help="no HTTP API")
    only.add_argument("--http-only", action="store_true", help="no consumer, no scheduler")
    serve.add_argument(
        "--migrate", action="store_true", help="apply pending migrations before starting"
    )
    commands.add_parser("migrate", help="apply pending migrations (safe with replicas)")
    dev = commands.add_parser(
        "dev", help="everything in one process: embedded PostgreSQL, in-process queue, sandbox"
    )
    dev.add_argument("--port", type=int, default=None, help="HTTP port (default 8080)")
    commands.add_parser("schema", help="print the send job JSON Schema")
    importer = commands.add_parser(
        "import-users",
        help="create or replace users from a CSV or JSON-lines file; prints a JSON summary",
    )
    importer.add_argument("file", type=Path, help="a .csv, .jsonl or .ndjson file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = _parser().parse_args(argv)
    if args.command == "schema":
        from gateway.jobs import job_json_schema

        sys.stdout.write(orjson.dumps(job_json_schema(), option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    try:
        if args.command == "dev":
            from gateway.devmode import run_dev

            return int(_run(run_dev(port=args.port)) or 0)
        settings = Settings.load()
        if args.command in ("migrate", "import-users"):
            settings.require("database_url")
        else:
            settings.require("database_url", "amqp_url", "api_token")
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    from gateway.logging import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    try:
        if args.command == "migrate":
            return int(_run(_migrate(settings)))
        if args.command == "import-users":
            return int(_run(_import_users(settings, args.file)))
        return int(_run(_serve(settings, args)) or 0)
    except _unreachable() as exc:
        # A backend that is down at start is an operations problem: say which, in one line.
        sys.stderr.write(f"gateway: cannot start: {type(exc).__name__}: {exc}\n")
        return 1


def _unreachable() -> tuple[type[BaseException], ...]:
    import aio_pika.exceptions
    import asyncpg

    return (OSError, asyncpg.PostgresError, aio_pika.exceptions.AMQPError)


async def _migrate(settings: Settings) -> int:
    from gateway.migrate import migrate

    applied = await migrate(settings.database_url or "")
    sys.stderr.write(f"migrations applied: {len(applied)}\n")
    return 0


async def _import_users(settings: Settings, path: Path) -> int:
    import asyncpg

    from gateway.importer import ImportFailed, detect_format, import_users, read_rows
    from gateway.progress import ProgressBar
    from gateway.recipients import Recipients

    try:
        stream = path.open("rb")
    except OSError as exc:
        sys.stderr.write(f"gateway: cannot import {path}: {exc}\n")
        return 1
    with stream:
        try:
            size = path.stat().st_size
            rows = read_rows(stream, detect_format(path.name, stream.peek(4096)[:4096]))
        except (OSError, ImportFailed) as exc:
            sys.stderr.write(f"gateway: cannot import {path}: {exc}\n")
            return 1
        # The bar follows the bytes read, the only total known before the end.
        bar = ProgressBar(sys.stderr, total=size, unit="rows") if sys.stderr.isatty() else None

        def progress(count: int) -> None:
            if bar is not None:
                bar.update(stream.tell(), count)

        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=1)
        try:
            summary = await import_users(
                rows, recipients=Recipients(pool=pool), on_progress=progress
            )
        except OSError as exc:
            sys.stderr.write(f"gateway: cannot import {path}: {exc}\n")
            return 1
        finally:
            await pool.close()
            if bar is not None:
                bar.finish()
    sys.stdout.write(orjson.dumps(summary.to_json()).decode() + "\n")
    return 0


async def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.app import Gateway
    from gateway.migrate import migrate

    if args.migrate:
        await migrate(settings.database_url or "")
    gateway = Gateway(settings, consume=not args.http_only, http=not args.consumer_only)
    await gateway.run_until_signalled()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
