"""Percentiles, latency summaries and the database counters the report reads."""

from __future__ import annotations

import math
from typing import Any, Sequence

import asyncpg

FINAL = ("sent", "failed", "suppressed", "expired")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_summary(latencies_s: Sequence[float]) -> dict[str, Any]:
    values = sorted(latencies_s)
    if not values:
        return {"count": 0}
    ms = lambda v: round(v * 1000, 1)  # noqa: E731
    return {
        "count": len(values),
        "p50_ms": ms(percentile(values, 50)),
        "p95_ms": ms(percentile(values, 95)),
        "p99_ms": ms(percentile(values, 99)),
        "max_ms": ms(values[-1]),
        "mean_ms": ms(sum(values) / len(values)),
    }


def windows(t0s: Sequence[float], lats: Sequence[float], start: float, width: float) -> list[dict]:
    """p50/p99 per ``width``-second window of publish time, to see drift under load."""
    buckets: dict[int, list[float]] = {}
    for t0, lat in zip(t0s, lats):
        buckets.setdefault(int((t0 - start) // width), []).append(lat)
    out = []
    for index in sorted(buckets):
        values = sorted(buckets[index])
        out.append({
            "from_s": index * width,
            "count": len(values),
            "p50_ms": round(percentile(values, 50) * 1000, 1),
            "p99_ms": round(percentile(values, 99) * 1000, 1),
            "max_ms": round(values[-1] * 1000, 1),
        })
    return out


_DB_COUNTERS = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted",
                "tup_fetched", "tup_returned", "blks_read", "blks_hit")


async def database_counters(admin: asyncpg.Connection, name: str) -> dict[str, int]:
    row = await admin.fetchrow(
        f"SELECT {', '.join(_DB_COUNTERS)} FROM pg_stat_database WHERE datname = $1", name
    )
    return {k: int(row[k] or 0) for k in _DB_COUNTERS} if row else {}


async def table_counters(conn: asyncpg.Connection) -> dict[str, dict[str, int]]:
    rows = await conn.fetch(
        "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del, seq_scan, idx_scan"
        " FROM pg_stat_user_tables"
    )
    return {r["relname"]: {k: int(r[k] or 0) for k in r.keys() if k != "relname"} for r in rows}


def delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in after.items():
        if isinstance(value, dict):
            out[key] = delta(value, before.get(key, {}))
        else:
            out[key] = value - before.get(key, 0)
    return out
