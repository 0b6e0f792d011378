"""Cap slots for a batch (``Store.grant_caps``, the ``gateway_grant_caps`` function) against a
model of the rule: jobs are decided in the batch's order, a job asks the campaign cap, then the
daily cap, then the per-channel cap, and only a granted job counts against each of its caps.

The function decides a batch in one statement when no counter is asked for twice and job by
job otherwise; random batches of both kinds, over counters left by earlier batches, must give
the model's answers, counts and ``cap_granted`` marks exactly.
"""

from __future__ import annotations

import random
from datetime import date

import asyncpg
import pytest

from gateway.store import CapRequest, Store

DAY = date(2026, 12, 3)


class Model:
    """The rule, in Python: counters by key, decided one job at a time."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, ...], int] = {}

    def grant(self, requests: list[CapRequest]) -> dict[str, str | None]:
        answers: dict[str, str | None] = {}
        for r in requests:
            asked = []
            if r.campaign_cap is not None:
                asked.append((("campaign", r.campaign_id or "", r.recipient), r.campaign_cap, "campaign_cap"))
            if r.daily_cap is not None:
                asked.append((("daily", r.recipient, r.day.isoformat(), ""), r.daily_cap, "daily_cap"))
            if r.channel_cap is not None:
                asked.append((("daily", r.recipient, r.day.isoformat(), r.channel), r.channel_cap, "daily_cap"))
            refusal = next((why for key, cap, why in asked if self.counts.get(key, 0) >= cap), None)
            if refusal is None:
                for key, _, _ in asked:
                    self.counts[key] = self.counts.get(key, 0) + 1
            answers[r.message_id] = refusal
        return answers


def _batch(rng: random.Random, start: int, size: int, recipients: list[str]) -> list[CapRequest]:
    return [
        CapRequest(
            message_id=f"m{start + n}",
            recipient=rng.choice(recipients),
            day=DAY,
            channel=rng.choice(["sms", "email", "push"]),
            daily_cap=rng.choice([None, 1, 2, 3]),
            channel_cap=rng.choice([None, None, 1, 2]),
            campaign_id=(campaign := rng.choice([None, "spring", "autumn"])),
            campaign_cap=rng.choice([1, 2]) if campaign else None,
        )
        for n in range(size)
    ]


async def _counters(pool: asyncpg.Pool) -> dict[tuple[str, ...], int]:
    daily = await pool.fetch("SELECT recipient, day, channel, count FROM daily_counters")
    campaign = await pool.fetch("SELECT campaign_id, recipient, count FROM campaign_counters")
    found = {("daily", r["recipient"], r["day"].isoformat(), r["channel"]): r["count"] for r in daily}
    found.update({("campaign", r["campaign_id"], r["recipient"]): r["count"] for r in campaign})
    return {key: count for key, count in found.items() if count}


@pytest.mark.parametrize(
    "recipients, size",
    [
        pytest.param(400, 30, id="distinct-counters"),  # mostly the one-statement path
        pytest.param(6, 30, id="shared-counters"),  # the job-by-job path
        pytest.param(60, 8, id="mixed"),
    ],
)
async def test_grants_match_the_model_batch_after_batch(
    clean: None, pg_pool: asyncpg.Pool, recipients: int, size: int
) -> None:
    rng = random.Random(f"{recipients}-{size}")
    people = [f"user:{n}" for n in range(recipients)]
    store, model = Store(pool=pg_pool), Model()
    granted_ids: set[str] = set()
    refusals = 0
    for index in range(25):
        batch = _batch(rng, index * size, size, people)
        await pg_pool.execute(
            "INSERT INTO messages (id, channel, kind, status, job)"
            " SELECT id, 'sms', 'promotional', 'processing', '{}' FROM unnest($1::text[]) AS id",
            [r.message_id for r in batch],
        )
        expected = model.grant(batch)
        assert await store.grant_caps(batch) == expected, f"batch {index}"
        granted_ids |= {m for m, why in expected.items() if why is None}
        refusals += sum(why is not None for why in expected.values())
    assert await _counters(pg_pool) == model.counts
    marked = {r["id"] for r in await pg_pool.fetch("SELECT id FROM messages WHERE cap_granted")}
    assert marked == granted_ids
    assert granted_ids and refusals  # both answers were exercised


async def test_a_batch_asking_one_counter_twice_is_decided_in_order(
    clean: None, pg_pool: asyncpg.Pool
) -> None:
    """Three messages for one recipient under a daily cap of 2: the first two get the slots."""
    batch = [
        CapRequest(f"m{n}", "user:ann", DAY, "sms", 2, None, None, None) for n in range(3)
    ]
    answers = await Store(pool=pg_pool).grant_caps(batch)
    assert answers == {"m0": None, "m1": None, "m2": "daily_cap"}
    assert await _counters(pg_pool) == {("daily", "user:ann", DAY.isoformat(), ""): 2}
