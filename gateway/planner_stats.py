"""Keep PostgreSQL's picture of the hot tables current, so that no cached plan outlives it.

The claim and the caps keep one generic plan per connection (``migrations/010``), and
PostgreSQL's own ``auto`` mode switches other statements to a generic plan once their batches
grow. A generic plan is costed on the table sizes of the moment it is made; one made while
``messages`` held a few hundred rows hash-joins a sequential scan of it, and keeps doing so at
30,000 rows (bench/runs.md, "Later morning runs": the record's plan did, and a batch cost 3x).
Plans are re-made when a table they read is analysed, but autovacuum analyses a table only once
it has changed by 10 % and at most once a minute per database, and a fresh database's tables
double in seconds under load.

So the consumer looks at the hot tables every few seconds (one catalogue query) and analyses
any that has doubled in size since it was last analysed. Doubling bounds the work: a table
growing to N pages is analysed about log2(N) times in its life, and once it is past a few
thousand rows the generic plans are the index plans they stay. Several replicas may analyse
the same table at once; that is harmless.

These ANALYZEs sample few rows (``statistics_target``, 10: 3,000 rows instead of the default
30,000). What the plans need from them is the table's size, which any sample gives, and the
default sample made each one a stall: 270-400 ms of a core for ``messages`` at 50,000 rows,
against 25 ms (bench/runs.md, "Night runs, second part": the benchmark's p99 spikes were
these seconds). Autovacuum's own ANALYZE, at the database's target, follows once a table
has changed by a tenth again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg
import structlog

log = structlog.get_logger("gateway.planner_stats")

# What the hot path reads: the tables the pipeline writes (fast-growing) and the ones it looks
# people up in (they grow by imports, in bulk).
HOT_TABLES = (
    "messages",
    "message_events",
    "deliveries",
    "daily_counters",
    "campaign_counters",
    "users",
    "endpoints",
    "opt_outs",
    "campaigns",
    "templates",
)

# Below this many pages (64 KiB) a table is read whole in any plan; analysing it would only
# churn plans.
MIN_PAGES = 8

# ANALYZE needs the table's owner, the database's owner or a superuser; without it PostgreSQL
# skips the table with a warning, and the check would try again every turn.
_SIZES = """
SELECT t.name, c.relpages, c.reltuples,
       pg_relation_size(c.oid) / current_setting('block_size')::integer AS pages
FROM unnest($1::text[]) AS t(name)
JOIN pg_class c ON c.oid = to_regclass(t.name)
WHERE pg_has_role(c.relowner, 'USAGE')
   OR pg_has_role((SELECT datdba FROM pg_database WHERE datname = current_database()), 'USAGE')
   OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
"""


@dataclass(frozen=True)
class TableSize:
    """A table's size now (``pages``) against what its statistics say (``relpages``)."""

    name: str
    relpages: int
    reltuples: float
    pages: int

    @property
    def stale(self) -> bool:
        """Never analysed, or doubled since: plans made on its statistics may scan it whole."""
        if self.pages < MIN_PAGES:
            return False
        return self.reltuples < 0 or self.pages >= 2 * max(self.relpages, MIN_PAGES // 2)


class PlannerStats:
    """Analyses the hot tables that outgrew their statistics; ``run`` until cancelled."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        interval: float = 2.0,
        tables: tuple[str, ...] = HOT_TABLES,
        statistics_target: int = 10,
    ) -> None:
        """``statistics_target``: the ``default_statistics_target`` of these ANALYZEs (a column
        with a target of its own keeps it)."""
        self._pool = pool
        self._interval = interval
        self._tables = list(tables)
        self._statistics_target = int(statistics_target)

    async def check(self) -> list[str]:
        """Analyse every hot table that has doubled since its last ANALYZE; return their names
        (one that is locked, by autovacuum say, is skipped until the next turn)."""
        rows = await self._pool.fetch(_SIZES, self._tables)
        stale = [TableSize(r["name"], r["relpages"], r["reltuples"], r["pages"]) for r in rows]
        stale = [t for t in stale if t.stale]
        for table in stale:
            # One table a statement, each short. SKIP_LOCKED: a table that autovacuum (or
            # another replica) is working on is skipped, not waited for (a long VACUUM would
            # otherwise hold up a start); the next turn sees it again if it is still stale.
            async with self._pool.acquire() as connection, connection.transaction():
                await connection.execute(
                    f"SET LOCAL default_statistics_target = {self._statistics_target}"
                )
                await connection.execute(f'ANALYZE (SKIP_LOCKED) "{table.name}"')
        if stale:
            log.info("planner_stats.analysed", tables=[t.name for t in stale],
                     pages=[t.pages for t in stale])
        return [t.name for t in stale]

    async def run(self) -> None:
        """Check every ``interval`` seconds (the first after one interval: the gateway checks
        once before its warm start); a database error waits for the next turn."""
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("planner_stats.check_failed", error=str(exc))
