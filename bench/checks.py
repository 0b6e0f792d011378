"""The correctness checks of a gateway phase, run once its workers have stopped: every job
recorded and final, one final event each, the expected outcomes, caps held, no send twice or
missing at the providers, no dead letters, workers exited cleanly with no error logged.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import aio_pika
import asyncpg

from bench import infra, seed, stats
from bench.common import log


async def correctness(
    workload: seed.Workload, records: dict[str, Any], codes: list[int | None],
    workers: list[infra.Child], *, db_url: str,
    amqp_channel: aio_pika.abc.AbstractChannel, daily_cap: int,
) -> dict[str, Any]:
    """Every job exactly one final state; none sent twice; caps held; outcomes as expected."""
    checks: dict[str, Any] = {}
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch("SELECT status, count(*) AS n FROM messages GROUP BY status")
        by_status = {r["status"]: int(r["n"]) for r in rows}
        total = sum(by_status.values())
        checks["all_jobs_recorded"] = {"ok": total == len(workload.jobs), "rows": total,
                                       "jobs": len(workload.jobs)}
        not_final = sum(n for s, n in by_status.items() if s not in stats.FINAL)
        checks["all_final"] = {"ok": not_final == 0, "by_status": by_status}
        bad_events = await conn.fetchval(
            "SELECT count(*) FROM (SELECT m.id, count(e.message_id) FILTER"
            " (WHERE e.status = ANY($1::text[])) AS finals FROM messages m"
            " LEFT JOIN message_events e ON e.message_id = m.id GROUP BY m.id) x"
            " WHERE finals <> 1", list(stats.FINAL),
        )
        checks["exactly_one_final_event_each"] = {"ok": bad_events == 0,
                                                  "messages_without_exactly_one": bad_events}
        expected = {k: v for k, v in workload.expected.items() if v}
        got = {k: v for k, v in by_status.items() if v}
        checks["outcomes_as_expected"] = {"ok": got == expected, "expected": expected,
                                          "got": got}
        cap = daily_cap
        max_counter = await conn.fetchval(
            "SELECT coalesce(max(count), 0) FROM daily_counters WHERE channel = ''"
        )
        over = await conn.fetchval(
            "SELECT count(*) FROM (SELECT coalesce('user:' || (job->'to'->>'user_id'),"
            " 'address:' || channel || ':' || recipient) AS k FROM messages"
            " WHERE kind = 'promotional' AND status = 'sent') s GROUP BY k"
            " HAVING count(*) > $1", cap,
        )
        checks["caps_held"] = {"ok": max_counter <= cap and not over, "daily_cap": cap,
                               "max_daily_counter": max_counter,
                               "recipients_over_cap_by_messages": over or 0}
        sent_ids = {r["id"] for r in
                    await conn.fetch("SELECT id FROM messages WHERE status = 'sent'")}
    finally:
        await conn.close()
    accepted = Counter()
    duplicates = 0
    unparsed = 0
    for channel in ("sms", "email", "push"):
        accepted.update(records[channel]["refs"])
        duplicates += records[channel]["duplicates"]
        unparsed += records[channel]["unparsed"]
    checks["none_sent_twice"] = {"ok": duplicates == 0 and unparsed == 0,
                                 "duplicates": duplicates, "unparsed_at_fake": unparsed}
    provider_ids = set(accepted)
    checks["providers_match_sent"] = {
        "ok": provider_ids == sent_ids,
        "sent_in_db": len(sent_ids), "accepted_by_fakes": len(provider_ids),
        "sent_not_at_provider": len(sent_ids - provider_ids),
        "at_provider_not_sent": len(provider_ids - sent_ids),
    }
    dead_queue = await amqp_channel.declare_queue("gateway.dead", passive=True)
    dead = dead_queue.declaration_result.message_count or 0
    checks["no_dead_letters"] = {"ok": dead == 0, "dead_letters": dead}
    checks["workers_exited_cleanly"] = {"ok": all(c == 0 for c in codes), "exit_codes": codes}
    errors = []
    for worker in workers:
        tail = worker.tail(200)
        errors += [line for line in tail.splitlines() if '"level":"error"' in line][:3]
    checks["no_worker_errors_logged"] = {"ok": not errors, "first": errors[:3]}
    ok = all(c["ok"] for c in checks.values())
    checks["ok"] = ok
    if not ok:
        log("correctness FAILED: " + ", ".join(k for k, c in checks.items()
                                               if isinstance(c, dict) and not c["ok"]))
    else:
        log("correctness: all checks passed")
    return checks
