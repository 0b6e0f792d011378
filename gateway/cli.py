"""The ``gateway`` command: ``serve``, ``migrate``, ``dev``, ``schema``, ``import-users``, ``keys``,
``purge``.

Settings are read here, once, and handed to everything else.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Coroutine, Sequence

import orjson

from gateway.settings import ConfigError, Settings

if TYPE_CHECKING:
    from gateway.keys import KeyInfo


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
    serve.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="consumer processes: this one plus N-1 children running serve --consumer-only",
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
    purge = commands.add_parser(
        "purge",
        help="delete finished messages older than an age, with their events, deliveries and"
        " receipts (opt-outs are kept); prints a JSON summary",
    )
    purge.add_argument(
        "--older-than", required=True, metavar="AGE", type=_age, help="e.g. 90d or 12h"
    )
    _key_parsers(commands)
    return parser


def _key_parsers(commands: Any) -> None:
    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="make a key and print it; it is shown this once")
    create.add_argument("--name", required=True, help="1-100 letters, digits, '.', '_' or '-'")
    create.add_argument("--scope", required=True, choices=["read", "send", "admin"])
    actions.add_parser("list", help="every key, revoked ones included (never a secret)")
    revoke = actions.add_parser("revoke", help="revoke a key by id, or the active key by name")
    revoke.add_argument("key", metavar="ID-or-NAME")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve" and args.http_only and args.workers > 1:
        parser.error("--workers starts consumer processes: it cannot go with --http-only")
    if args.command == "schema":
        from gateway.jobs import job_json_schema

        sys.stdout.write(orjson.dumps(job_json_schema(), option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    try:
        if args.command == "dev":
            from gateway.devmode import run_dev

            return int(_run(run_dev(port=args.port)) or 0)
        settings = Settings.load()
        if args.command in ("migrate", "import-users", "keys", "purge"):
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
        if args.command == "purge":
            return int(_run(_purge(settings, args.older_than)))
        if args.command == "keys":
            return int(_run(_keys(settings, args)))
        return int(_run(_serve(settings, args)) or 0)
    except ConfigError as exc:  # the settings disagree with a backend (e.g. the queue type)
        sys.stderr.write(f"{exc}\n")
        return 2
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


async def _keys(settings: Settings, args: argparse.Namespace) -> int:
    import asyncpg

    from gateway.keys import ApiKeys, NameTaken, Scope, valid_name
    from gateway.outcomes import utcnow

    if args.keys_command == "create" and not valid_name(args.name):
        sys.stderr.write("gateway: --name must be 1-100 letters, digits, '.', '_' or '-'\n")
        return 2
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=1)
    try:
        keys = ApiKeys(pool=pool)
        if args.keys_command == "create":
            try:
                info, key = await keys.create(args.name, Scope(args.scope), now=utcnow())
            except NameTaken:
                sys.stderr.write(f"gateway: an active key is already named {args.name!r}\n")
                return 1
            sys.stderr.write(
                f"created key {info.id} ({info.name}, scope {info.scope.value});"
                " it is shown this once: store it now\n"
            )
            sys.stdout.write(key + "\n")
        elif args.keys_command == "list":
            sys.stdout.write(_key_table(await keys.list()))
        else:
            revoked = await keys.revoke(args.key, now=utcnow())
            if revoked is None:
                sys.stderr.write(f"gateway: no key with id, or active key named, {args.key!r}\n")
                return 1
            sys.stderr.write(f"revoked key {revoked.id} ({revoked.name})\n")
    finally:
        await pool.close()
    return 0


def _key_table(keys: Sequence[KeyInfo]) -> str:
    """One line per key under a header, columns aligned; ``-`` for a time not set."""
    rows: list[list[str]] = [["ID", "NAME", "SCOPE", "CREATED", "LAST USED", "REVOKED"]]
    for key in keys:
        times = (key.created_at, key.last_used_at, key.revoked_at)
        shown = [t.strftime("%Y-%m-%dT%H:%M:%SZ") if t else "-" for t in times]
        rows.append([key.id, key.name, key.scope.value, *shown])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() + "\n" for row in rows
    )


def _age(text: str) -> timedelta:
    from gateway.retention import parse_age

    try:
        return parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def _purge(settings: Settings, older_than: timedelta) -> int:
    import asyncpg

    from gateway.retention import PurgeBusy, purge

    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=1)
    try:
        result = await purge(pool, older_than=older_than)
    except PurgeBusy as exc:
        sys.stderr.write(f"gateway: {exc}; try again later\n")
        return 1
    finally:
        await pool.close()
    sys.stdout.write(orjson.dumps(result.to_json()).decode() + "\n")
    return 0


def _tune_gc() -> None:
    """Make the garbage collector cheap for a long-running consumer.

    Measured with the benchmark, the collector took 12 % of a busy worker's CPU (38 % with
    10,000 jobs in flight), mostly re-walking objects that live as long as the process. Freezing
    what start-up made (modules, models, compiled templates) takes them out of every later
    collection, and a larger first generation makes young collections rarer; cycles are still
    collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)


async def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.app import Gateway
    from gateway.migrate import migrate

    if args.migrate:
        await migrate(settings.database_url or "")
    gateway = Gateway(settings, consume=not args.http_only, http=not args.consumer_only)
    _tune_gc()
    if args.workers > 1:
        from gateway.workers import run_with_workers

        return await run_with_workers(gateway, children=args.workers - 1)
    await gateway.run_until_signalled()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
