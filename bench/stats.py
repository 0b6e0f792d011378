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


# Bands of machine load (% of all cores busy) for ``latency_by_load``.
BUSY_BANDS = (80.0, 84.0, 88.0, 92.0)


def latency_by_load(
    windows_1s: Sequence[dict[str, Any]],
    busy_timeline: Sequence[tuple[float, float]],
    maintenance: Sequence[tuple[float, str]],
    start: float,
    *,
    limit_ms: float,
    bands: Sequence[float] = BUSY_BANDS,
    min_count: int = 50,
) -> dict[str, Any]:
    """Each second of a paced phase beside how busy the machine was in it and what database
    maintenance ran in it, and how many seconds met ``limit_ms`` (p99), by band of load.

    ``windows_1s``: ``windows(..., width=1.0)`` from ``start``; ``busy_timeline``: (epoch time,
    % of the machine busy since the sample before); ``maintenance``: (epoch time, statement)
    for every sample that saw an ANALYZE, a VACUUM or an autovacuum worker at work. A second
    with fewer than ``min_count`` sends (a stray job either side of the phase), or with no
    load sample, is left out.
    """
    busy: dict[int, list[float]] = {}
    for at, percent in busy_timeline:
        busy.setdefault(int((at - start) // 1), []).append(percent)
    seen: dict[int, set[str]] = {}
    for at, what in maintenance:
        seen.setdefault(int((at - start) // 1), set()).add(what)
    seconds = []
    for w in windows_1s:
        second = int(w["from_s"])
        if w["count"] < min_count or second not in busy:
            continue
        seconds.append({
            "from_s": second,
            "count": w["count"],
            "p99_ms": w["p99_ms"],
            "machine_busy_percent": round(sum(busy[second]) / len(busy[second]), 1),
            "maintenance": sorted(seen.get(second, ())),
        })

    def share(p99s: list[float]) -> dict[str, Any]:
        ordered = sorted(p99s)
        return {"seconds": len(ordered), "within_limit": sum(p <= limit_ms for p in ordered),
                "median_p99_ms": percentile(ordered, 50) if ordered else None,
                "worst_p99_ms": ordered[-1] if ordered else None}

    edges = [0.0, *bands, math.inf]
    by_band = []
    for low, high in zip(edges, edges[1:]):
        inside = [s["p99_ms"] for s in seconds if low <= s["machine_busy_percent"] < high]
        if inside:
            by_band.append({"busy_from": low, "busy_to": None if high == math.inf else high,
                            **share(inside)})
    return {
        "limit_ms": limit_ms,
        "seconds": seconds,
        "by_machine_busy": by_band,
        "with_maintenance": share([s["p99_ms"] for s in seconds if s["maintenance"]]),
        "without_maintenance": share([s["p99_ms"] for s in seconds if not s["maintenance"]]),
    }


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
