"""Migrations: applied in numeric order, each exactly once, also when replicas start together."""

from __future__ import annotations

import asyncio
import secrets
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from gateway.migrate import MIGRATIONS_DIR, migrate, migration_files
from tests.conftest import PG_ADMIN_URL


@pytest.fixture
async def fresh_database_url() -> AsyncIterator[str]:
    """An empty database of its own, dropped after the test."""
    name = f"gw_mig_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(PG_ADMIN_URL, timeout=10)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urllib.parse.urlunsplit(urllib.parse.urlsplit(PG_ADMIN_URL)._replace(path=f"/{name}"))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def applied_names(database_url: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT name FROM schema_migrations ORDER BY name")
    finally:
        await conn.close()
    return [r["name"] for r in rows]


def test_migration_files_are_ordered_by_number(tmp_path: Path) -> None:
    """Files are ordered by their numeric prefix, not as text (2 before 10), and only .sql counts."""
    for name in ("2_b.sql", "10_a.sql", "1_c.sql", "notes.txt"):
        (tmp_path / name).write_text("SELECT 1;")
    assert [p.name for p in migration_files(tmp_path)] == ["1_c.sql", "2_b.sql", "10_a.sql"]


def test_committed_migrations_are_found() -> None:
    """The repository's migrations directory holds at least the first migration."""
    names = [p.name for p in migration_files()]
    assert names[0] == "001_messages.sql"
    assert names == sorted(p.name for p in MIGRATIONS_DIR.glob("*.sql"))


async def test_concurrent_migrations_apply_each_file_exactly_once(fresh_database_url: str) -> None:
    """Two migrate() runs started together apply every migration once between them, without error."""
    first, second = await asyncio.gather(migrate(fresh_database_url), migrate(fresh_database_url))

    expected = [p.name for p in migration_files()]
    assert sorted([first, second], key=len) == [[], expected]
    assert await applied_names(fresh_database_url) == sorted(expected)
    conn = await asyncpg.connect(fresh_database_url)
    try:
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables")}
    finally:
        await conn.close()
    assert {"messages", "message_events", "schema_migrations"} <= tables


async def test_second_run_applies_nothing(fresh_database_url: str) -> None:
    """Once migrated, running migrate() again applies nothing."""
    assert await migrate(fresh_database_url) == [p.name for p in migration_files()]
    assert await migrate(fresh_database_url) == []


async def test_migrations_run_in_numeric_order_and_new_ones_are_picked_up(
    fresh_database_url: str, tmp_path: Path
) -> None:
    """Each file may depend on the ones numbered before it; a file added later is applied on the next run."""
    (tmp_path / "1_c.sql").write_text("CREATE TABLE one (id int PRIMARY KEY);")
    (tmp_path / "2_b.sql").write_text("CREATE TABLE two (one_id int REFERENCES one);")
    (tmp_path / "10_a.sql").write_text("ALTER TABLE two ADD COLUMN note text;")
    assert await migrate(fresh_database_url, tmp_path) == ["1_c.sql", "2_b.sql", "10_a.sql"]

    (tmp_path / "11_d.sql").write_text(
        "INSERT INTO one VALUES (1); INSERT INTO two VALUES (1, 'x');"
    )
    assert await migrate(fresh_database_url, tmp_path) == ["11_d.sql"]
    assert await applied_names(fresh_database_url) == ["10_a.sql", "11_d.sql", "1_c.sql", "2_b.sql"]


async def test_failed_migration_is_rolled_back_and_not_recorded(
    fresh_database_url: str, tmp_path: Path
) -> None:
    """A migration that fails leaves no trace of itself, and the lock is released for the next run."""
    (tmp_path / "1_ok.sql").write_text("CREATE TABLE ok (id int);")
    (tmp_path / "2_bad.sql").write_text(
        "CREATE TABLE half (id int); SELECT no_such_column FROM ok;"
    )
    with pytest.raises(asyncpg.UndefinedColumnError):
        await migrate(fresh_database_url, tmp_path)
    assert await applied_names(fresh_database_url) == ["1_ok.sql"]

    (tmp_path / "2_bad.sql").write_text("CREATE TABLE half (id int);")
    assert await asyncio.wait_for(migrate(fresh_database_url, tmp_path), 10) == ["2_bad.sql"]
