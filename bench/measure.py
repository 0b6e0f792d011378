"""What a gateway phase measured: the states of its PostgreSQL backends, sampled while it runs,
and the summary of the phase (rate, latency, RSS, CPU, database transactions) once it is done.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import asyncpg

from bench import monitor, seed, stats
from bench.common import PG_ADMIN_URL, log
from bench.publisher import PublishResult


async def sample_db_waits(db_name: str) -> dict[str, Any]:
    """What the gateway's PostgreSQL backends are doing, sampled every 0.2 s from
    pg_stat_activity (read through the admin database: costs the bench database nothing).

    ``maintenance``: [time.time(), statement] for each sample that saw an ANALYZE or a VACUUM
    at work, the gateway's (``planner_stats``) or an autovacuum worker's."""
    counter: Counter[str] = Counter()
    maintenance: list[list[Any]] = []
    samples = 0
    conn = await asyncpg.connect(PG_ADMIN_URL)  # its own: the admin one is used meanwhile
    try:
        while True:
            rows = await conn.fetch(
                "SELECT state, wait_event_type, wait_event, backend_type, left(query, 80) AS query"
                " FROM pg_stat_activity WHERE datname = $1 AND application_name <> 'bench'",
                db_name,
            )
            samples += 1
            at = round(time.time(), 2)
            for r in rows:
                query = (r["query"] or "").strip()
                if r["state"] == "active" and (
                    r["backend_type"] == "autovacuum worker"
                    or query[:7].upper() in ("ANALYZE", "VACUUM ")
                ):
                    maintenance.append([at, query])
                if r["state"] == "active":
                    what = f"active: {r['wait_event_type']}/{r['wait_event']}" \
                        if r["wait_event_type"] else "active: on CPU"
                else:
                    what = str(r["state"])
                counter[what] += 1
            await asyncio.sleep(0.2)
    except asyncio.CancelledError:
        pass
    finally:
        await conn.close()
    return {"samples": samples,
            "mean_backends": {k: round(v / max(samples, 1), 2)
                              for k, v in counter.most_common(8)},
            "maintenance": maintenance}


def summary(
    name: str, workload: seed.Workload, published: PublishResult,
    done: dict[str, Any], records: dict[str, Any], rss: monitor.RssSampler,
    cpu_result: dict[str, Any], db_before: dict[str, int], db_after: dict[str, int],
    codes: list[int | None], rate: float | None, *, workers: int, own_xacts: int,
) -> dict[str, Any]:
    first = published.first
    lat_all: list[float] = []
    t0_all: list[float] = []
    per_channel: dict[str, Any] = {}
    last_accept = first
    for channel in ("sms", "email", "push"):
        rec = records[channel]
        lats = [at - t0 for t0, at in zip(rec["t0"], rec["at"])]
        lat_all += lats
        t0_all += rec["t0"]
        if rec["at"]:
            last_accept = max(last_accept, max(rec["at"]))
        per_channel[channel] = {"accepted": rec["accepted"], **stats.latency_summary(lats)}
    jobs = len(workload.jobs)
    seconds = max(last_accept - first, 1e-9)
    xacts = db_after.get("xact_commit", 0) - db_before.get("xact_commit", 0) - own_xacts
    db = stats.delta(db_after, db_before)
    out: dict[str, Any] = {
        "jobs": jobs,
        "workers": workers,
        "complete": done["complete"],
        "first_publish_to_last_acceptance_s": round(seconds, 3),
        "rate_jobs_per_s": round(jobs / seconds, 1),
        "rate_sent_per_s": round(len(lat_all) / seconds, 1),
        "first_publish_to_all_final_s": round(done["all_final_at"] - first, 3),
        "publish": published.to_json(),
        "latency": stats.latency_summary(lat_all),
        "latency_by_channel": per_channel,
        "peak_rss_mb": rss.peak_mb(),
        "rss_mb_every_second": [
            [round(t, 1), {k: round(v / monitor.MB, 1) for k, v in sample.items()}]
            for t, sample in rss.series[::10]
        ],
        "cpu": cpu_result,
        "database": {
            "xact_commit": xacts,
            "xacts_per_job": round(xacts / jobs, 4),
            "bench_own_xacts_subtracted": own_xacts,
            "tup_inserted_per_job": round(db.get("tup_inserted", 0) / jobs, 2),
            "tup_updated_per_job": round(db.get("tup_updated", 0) / jobs, 2),
            "xact_rollback": db.get("xact_rollback", 0),
        },
        "gateway_cpu_ms_per_job": round(
            1000 * cpu_result["roles"]["gateway_workers"]["cpu_seconds"] / jobs, 3),
        "worker_exit_codes": codes,
        "expected": dict(workload.expected),
        "sms_max_in_flight_at_fake": records.get("sms_max_in_flight"),
    }
    if rate:
        out["offered_rate"] = round(rate, 1)
        steady = [(t0, lat) for t0, lat in zip(t0_all, lat_all) if t0 - first >= 5]
        out["latency_after_5s_warmup"] = stats.latency_summary([lat for _, lat in steady])
        out["latency_windows_10s"] = stats.windows(t0_all, lat_all, first, 10.0)
        # Where the warm-up's tail sits: the first ten seconds, second by second; and every
        # second of the phase, to line a window's tail up with what else happened then
        # (``first_publish_at`` is the publisher's clock, time.time()).
        every_second = stats.windows(t0_all, lat_all, first, 1.0)
        out["latency_windows_1s_first_10s"] = [w for w in every_second if 0 <= w["from_s"] < 10]
        out["latency_windows_1s"] = every_second
        out["first_publish_at"] = round(first, 3)
    lat = out["latency"]
    log(f"{name}: {out['rate_jobs_per_s']} jobs/s end to end ({jobs} jobs in {seconds:.2f} s),"
        f" latency p50 {lat.get('p50_ms')} p95 {lat.get('p95_ms')} p99 {lat.get('p99_ms')} "
        f"max {lat.get('max_ms')} ms, peak RSS {rss.peak_mb()} MB, "
        f"{out['database']['xacts_per_job']} db xacts/job")
    return out
