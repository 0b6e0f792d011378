"""Apply ``migrations/*.sql`` in order, each once, safely when several replicas start together."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import structlog

log = structlog.get_logger(__name__)

# Any constant will do; it only has to be the same for every replica of this gateway.
_LOCK_KEY = 0x6761_7465_7761_79  # "gateway"
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    """The migration files, ordered by their numeric prefix (``001_x.sql`` before ``010_y.sql``)."""
    files = sorted(directory.glob("*.sql"), key=lambda p: (int(p.name.split("_", 1)[0]), p.name))
    return files


async def migrate(database_url: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply what is missing; return the names applied. A session advisory lock serialises replicas."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
            applied = []
            for path in migration_files(directory):
                if path.name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text())
                    await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", path.name)
                log.info("migration.applied", name=path.name)
                applied.append(path.name)
            return applied
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    finally:
        await conn.close()
