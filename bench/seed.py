"""The benchmark's population, policy and jobs, and the outcome each job must have.

Users get one endpoint per channel (SMS number, email address, APNs token) and a time zone.
Quiet hours are placed relative to *now*: a few zones ("quiet zones") are inside the window
for the whole run, every other zone is at least an hour away from both its edges and half an
hour away from local midnight (so no daily-cap day changes during a run of up to 30 minutes).
Promotional jobs carry ``expires_at`` = publish + 30 min, which falls inside the quiet window,
so a quiet recipient's job is *expired* at once (a final state) instead of deferred for hours.

Everything is derived from one random seed, so the expected outcomes are exact:

- opted-out address (any kind)      -> suppressed (opted_out)
- transactional                     -> sent (bypasses caps and quiet hours)
- promotional, recipient in quiet   -> expired (expires_at falls within quiet hours)
- promotional otherwise             -> the first ``daily_cap`` per recipient key sent, the rest
                                       suppressed (daily_cap); the key is ``user:<id>`` for
                                       SMS and push (user_id jobs), ``address:email:<addr>``
                                       for email (raw addresses, default time zone)
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import orjson
import phonenumbers

ZONES = [
    "Pacific/Honolulu", "America/Anchorage", "America/Los_Angeles", "America/Denver",
    "America/Chicago", "America/New_York", "America/Bogota", "America/Sao_Paulo",
    "America/Argentina/Buenos_Aires", "Atlantic/Azores", "Atlantic/Cape_Verde", "Europe/London",
    "Europe/Lisbon", "Europe/Paris", "Africa/Lagos", "Europe/Athens", "Africa/Nairobi",
    "Europe/Moscow", "Asia/Dubai", "Asia/Karachi", "Asia/Kolkata", "Asia/Kathmandu",
    "Asia/Dhaka", "Asia/Bangkok", "Asia/Jakarta", "Asia/Shanghai", "Asia/Singapore",
    "Asia/Tokyo", "Australia/Brisbane", "Australia/Sydney", "Pacific/Noumea",
    "Pacific/Auckland", "Pacific/Tongatapu", "America/Mexico_City", "America/Halifax",
    "America/St_Johns", "Asia/Tehran", "Asia/Yangon", "Australia/Darwin", "Pacific/Kiritimati",
]

SMS_BODY = "Hi {{ name }}, your code is {{ code }}. ref:{{ ref }} t0:{{ t0 }}"
EMAIL_CONTENT = {
    "subject": "Your order {{ order }} has shipped",
    "text": "Hello {{ name }},\n\nYour order {{ order }} is on its way.\n\n"
            "ref:{{ ref }} t0:{{ t0 }}\n",
    "html": "<p>Hello {{ name }},</p><p>Your order <b>{{ order }}</b> is on its way.</p>"
            "<p>ref:{{ ref }} t0:{{ t0 }}</p>",
}
PUSH_CONTENT = {
    "title": "Order {{ order }}",
    "body": "{{ name }}, your order has shipped. ref:{{ ref }} t0:{{ t0 }}",
    "data": {"screen": "orders"},
}

INLINE_CONTENT: dict[str, dict[str, Any]] = {
    "sms": {"body": SMS_BODY}, "email": EMAIL_CONTENT, "push": PUSH_CONTENT,
}
# The stored template of each channel (`PUT /v1/templates/{name}` bodies): the inline content
# under the channel's name, so a run with `--inline` renders the same messages.
TEMPLATES: dict[str, dict[str, Any]] = {
    f"bench-{channel}": {channel: content} for channel, content in INLINE_CONTENT.items()
}


@dataclass(slots=True)
class User:
    id: str
    timezone: str
    quiet: bool
    phone: str
    email: str
    token: str
    sms_opted_out: bool
    email_opted_out: bool


@dataclass
class Population:
    users: list[User]
    daily_cap: int
    quiet_hours: dict[str, str]
    default_timezone: str
    quiet_zones: list[str]
    outside_zones: list[str]

    def policy_rules(self) -> dict[str, Any]:
        return {
            "daily_cap": self.daily_cap,
            "daily_cap_per_channel": {},
            "quiet_hours": self.quiet_hours,
            "default_timezone": self.default_timezone,
            "transactional_bypass": True,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "users": len(self.users),
            "daily_cap": self.daily_cap,
            "quiet_hours": self.quiet_hours,
            "default_timezone": self.default_timezone,
            "quiet_zone_users": sum(u.quiet for u in self.users),
            "sms_opted_out": sum(u.sms_opted_out for u in self.users),
            "email_opted_out": sum(u.email_opted_out for u in self.users),
            "zones": len(self.quiet_zones) + len(self.outside_zones),
        }


def _minutes(moment: datetime) -> int:
    return moment.hour * 60 + moment.minute


def _circular_distance(a: int, b: int) -> int:
    d = abs(a - b) % 1440
    return min(d, 1440 - d)


def _in_window(minute: int, start: int, end: int) -> bool:
    return (start <= minute < end) if start < end else (minute >= start or minute < end)


def plan_zones(now: datetime) -> tuple[dict[str, str], list[str], list[str]]:
    """Quiet hours around the local time of the first zone; the quiet and the outside zones."""
    local = {z: _minutes(now.astimezone(ZoneInfo(z))) for z in ZONES}
    anchor = local[ZONES[0]]
    start, end = (anchor - 60) % 1440, (anchor + 180) % 1440
    quiet_hours = {"start": f"{start // 60:02d}:{start % 60:02d}",
                   "end": f"{end // 60:02d}:{end % 60:02d}"}
    quiet, outside = [], []
    for zone, minute in local.items():
        # Well inside: >= 45 min after the start, >= 75 min before the end (expires_at = +30).
        if _in_window(minute, (start + 45) % 1440, (end - 75) % 1440):
            quiet.append(zone)
        elif (not _in_window(minute, (start - 60) % 1440, (end + 60) % 1440)
              and _circular_distance(minute, 0) >= 30):
            outside.append(zone)
    if not quiet or len(outside) < 5:
        raise RuntimeError(f"cannot place quiet hours now: quiet={quiet} outside={outside}")
    return quiet_hours, quiet, outside


def _phone(i: int) -> str:
    # US numbers in 415 / 628 with a valid exchange; checked with phonenumbers, E.164.
    area = ("415", "628", "650")[i // 3_000_000 % 3]
    number = f"+1{area}{2_000_000 + (i * 7919) % 7_000_000:07d}"
    if not phonenumbers.is_valid_number(phonenumbers.parse(number, None)):
        raise RuntimeError(f"generated an invalid phone number {number}")
    return number


def build_population(
    *, users: int, daily_cap: int, seed: int, now: datetime, quiet_share: float = 0.1,
    opt_out_share: float = 0.02,
) -> Population:
    rng = random.Random(seed)
    quiet_hours, quiet_zones, outside_zones = plan_zones(now)
    people = []
    for i in range(users):
        quiet = rng.random() < quiet_share
        zone = rng.choice(quiet_zones if quiet else outside_zones)
        people.append(User(
            id=f"u{i:06d}",
            timezone=zone,
            quiet=quiet,
            phone=_phone(i),
            email=f"user{i}@bench.example.com",
            token=hashlib.sha256(f"token-{seed}-{i}".encode()).hexdigest(),
            sms_opted_out=rng.random() < opt_out_share,
            email_opted_out=rng.random() < opt_out_share,
        ))
    return Population(people, daily_cap, quiet_hours, outside_zones[0], quiet_zones,
                      outside_zones)


async def seed_database(conn: asyncpg.Connection, population: Population) -> dict[str, float]:
    """Users, endpoints, opt-outs (COPY), a stored template per channel and the global policy."""
    import time

    started = time.perf_counter()
    now = datetime.now(timezone.utc)
    await conn.copy_records_to_table(
        "users", columns=["id", "timezone", "locale", "attributes", "created_at", "updated_at"],
        records=[(u.id, u.timezone, "en-US", "{}", now, now) for u in population.users],
    )
    endpoints = []
    for u in population.users:
        endpoints.append((u.id, "sms", u.phone, None, True, now))
        endpoints.append((u.id, "email", u.email, None, True, now))
        endpoints.append((u.id, "push", u.token, "apns", True, now))
    await conn.copy_records_to_table(
        "endpoints", columns=["user_id", "channel", "address", "platform", "active", "created_at"],
        records=endpoints,
    )
    opt_outs = [("sms", u.phone, "api", now) for u in population.users if u.sms_opted_out]
    opt_outs += [("email", u.email.lower(), "api", now) for u in population.users
                 if u.email_opted_out]
    await conn.copy_records_to_table(
        "opt_outs", columns=["channel", "address", "source", "created_at"], records=opt_outs,
    )
    # One stored template per channel, version 1 (what PUT /v1/templates/{name} writes).
    await conn.executemany(
        "INSERT INTO templates (name, latest) VALUES ($1, 1)", [(n,) for n in TEMPLATES]
    )
    await conn.executemany(
        "INSERT INTO template_versions (name, version, body) VALUES ($1, 1, $2::jsonb)",
        [(name, orjson.dumps(body).decode()) for name, body in TEMPLATES.items()],
    )
    await conn.execute(
        "INSERT INTO policy (id, rules) VALUES (true, $1::jsonb)"
        " ON CONFLICT (id) DO UPDATE SET rules = EXCLUDED.rules",
        orjson.dumps(population.policy_rules()).decode(),
    )
    await conn.execute("ANALYZE users; ANALYZE endpoints; ANALYZE opt_outs; ANALYZE policy")
    return {"seconds": round(time.perf_counter() - started, 2), "endpoints": len(endpoints),
            "opt_outs": len(opt_outs)}


@dataclass
class Job:
    id: str
    routing_key: str
    channel: str
    body: dict[str, Any]  # without data.t0, set at publish time
    expected: str  # sent | suppressed | expired
    user: str  # user id (for email: the user whose address it is)


@dataclass
class Workload:
    jobs: list[Job]
    expected: Counter = field(default_factory=Counter)
    expected_by_channel: dict[str, Counter] = field(default_factory=dict)

    @property
    def expected_sent(self) -> int:
        return self.expected["sent"]


def build_workload(
    population: Population, *, count: int, prefix: str, seed: int, transactional_share: float,
    expires_at: datetime, templates: bool = True,
) -> Workload:
    """``count`` jobs: 70 % SMS (user_id), 20 % email (raw address), 10 % push (user_id); each
    names its channel's stored template (``templates``) or carries the same content inline."""
    rng = random.Random(f"{seed}-{prefix}")
    expires = expires_at.isoformat()
    used: Counter[str] = Counter()
    jobs: list[Job] = []
    expected: Counter[str] = Counter()
    by_channel: dict[str, Counter] = {c: Counter() for c in ("sms", "email", "push")}
    for i in range(count):
        slot = i % 10
        channel = "sms" if slot < 7 else "email" if slot < 9 else "push"
        user = population.users[rng.randrange(len(population.users))]
        transactional = rng.random() < transactional_share
        job_id = f"{prefix}-{i:07d}"
        data = {"name": f"User {user.id[1:]}", "code": f"{rng.randrange(10**6):06d}",
                "order": f"A{rng.randrange(10**7):07d}", "ref": job_id}
        body: dict[str, Any] = {"id": job_id, "channel": channel, "data": data}
        if channel == "sms":
            body["to"] = {"user_id": user.id}
            opted_out, key = user.sms_opted_out, f"user:{user.id}"
        elif channel == "email":
            body["to"] = {"address": user.email}
            opted_out, key = user.email_opted_out, f"address:email:{user.email}"
        else:
            body["to"] = {"user_id": user.id}
            opted_out, key = False, f"user:{user.id}"
        if templates:
            body["template"] = f"bench-{channel}"
        else:
            body["content"] = INLINE_CONTENT[channel]
        if not transactional:
            body["expires_at"] = expires
        quiet = user.quiet and channel != "email"  # raw email addresses use the default zone
        if opted_out:
            outcome = "suppressed"
        elif transactional:
            outcome = "sent"
        elif quiet:
            outcome = "expired"
        else:
            used[key] += 1
            outcome = "sent" if used[key] <= population.daily_cap else "suppressed"
        expected[outcome] += 1
        by_channel[channel][outcome] += 1
        jobs.append(Job(job_id, "send.transactional" if transactional else "send.promotional",
                        channel, body, outcome, user.id))
    return Workload(jobs, expected, by_channel)


def expires_for_run(now: datetime) -> datetime:
    return now + timedelta(minutes=30)
