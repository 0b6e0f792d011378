"""The stored rules' parser and the override arithmetic (pure, no fixtures)."""

from __future__ import annotations

from datetime import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.policy import QuietHours
from gateway.rules import (
    CampaignRules,
    Limits,
    bypasses_policy,
    effective_daily_cap,
    effective_quiet_hours,
)

NIGHT = QuietHours(time(21), time(8))
LUNCH = QuietHours(time(12), time(13, 30))


def test_no_stored_limits_are_the_defaults() -> None:
    """None parses to no caps, no quiet hours, UTC and the transactional bypass on."""
    assert Limits.from_json(None) == Limits(
        daily_cap=None,
        daily_cap_per_channel={},
        quiet_hours=None,
        default_timezone="UTC",
        transactional_bypass=True,
    )


def test_missing_and_null_keys_take_their_defaults() -> None:
    """A stored object with only some keys, or nulls for the zone and bypass, parses with defaults for the rest."""
    limits = Limits.from_json(
        {"daily_cap": 2, "default_timezone": None, "transactional_bypass": None}
    )
    assert limits == Limits(daily_cap=2)


@pytest.mark.parametrize(
    "stored",
    [
        {"daily_cap": -1},
        {"daily_cap": "3"},
        {"daily_cap": True},
        {"daily_cap_per_channel": {"fax": 1}},
        {"daily_cap_per_channel": [1]},
        {"quiet_hours": {"start": "21:00"}},
        {"default_timezone": "Nowhere/Land"},
        {"transactional_bypass": "no"},
    ],
)
def test_malformed_stored_limits_raise_value_error(stored: dict[str, Any]) -> None:
    """A stored value of the wrong type or range raises ValueError rather than being guessed at."""
    with pytest.raises(ValueError):
        Limits.from_json(stored)


def test_campaign_overrides_win_when_present_even_as_null() -> None:
    """A campaign's daily cap and quiet hours replace the global ones when present, null included; absent ones follow the global rule."""
    limits = Limits(daily_cap=5, quiet_hours=NIGHT)
    follows = CampaignRules.from_json({"cap": 2})
    clears = CampaignRules.from_json({"cap": 2, "daily_cap": None, "quiet_hours": None})
    changes = CampaignRules.from_json({"daily_cap": 1, "quiet_hours": LUNCH.to_json()})
    assert [effective_daily_cap(limits, c) for c in (None, follows, clears, changes)] == [
        5,
        5,
        None,
        1,
    ]
    assert [effective_quiet_hours(limits, c) for c in (None, follows, clears, changes)] == [
        NIGHT,
        NIGHT,
        None,
        LUNCH,
    ]


def test_campaign_json_keeps_only_the_overrides_given() -> None:
    """to_json writes cap always and an override only when the campaign has one."""
    assert CampaignRules(cap=2).to_json() == {"cap": 2}
    assert CampaignRules(has_daily_cap=True).to_json() == {"cap": None, "daily_cap": None}
    assert CampaignRules(has_quiet_hours=True, quiet_hours=NIGHT).to_json() == {
        "cap": None,
        "quiet_hours": {"start": "21:00", "end": "08:00"},
    }


def test_an_override_value_without_its_flag_is_refused() -> None:
    """A daily cap or quiet hours without has_* set would be ignored, so it is refused."""
    with pytest.raises(ValueError):
        CampaignRules(daily_cap=3)
    with pytest.raises(ValueError):
        CampaignRules(quiet_hours=NIGHT)


@pytest.mark.parametrize(
    ("kind", "bypass", "expected"),
    [("transactional", True, True), ("transactional", False, False), ("promotional", True, False)],
)
def test_only_transactional_jobs_bypass_and_only_when_configured(
    kind: str, bypass: bool, expected: bool
) -> None:
    """Transactional jobs skip caps and quiet hours while transactional_bypass is on; promotional ones never do."""
    assert bypasses_policy(Limits(transactional_bypass=bypass), kind) is expected


caps = st.none() | st.integers(min_value=0, max_value=10**6)
windows = st.none() | st.builds(
    lambda s, e: None if s == e else QuietHours(time(*divmod(s, 60)), time(*divmod(e, 60))),
    st.integers(0, 1439),
    st.integers(0, 1439),
)


@given(
    daily=caps,
    per_channel=st.dictionaries(st.sampled_from(["email", "sms", "push"]), caps),
    window=windows,
    zone=st.sampled_from(["UTC", "Europe/Lisbon", "America/New_York", "Asia/Kolkata"]),
    bypass=st.booleans(),
)
def test_limits_survive_a_round_trip_through_json(
    daily: int | None,
    per_channel: dict[str, int | None],
    window: QuietHours | None,
    zone: str,
    bypass: bool,
) -> None:
    """Any valid limits parse back from their JSON form unchanged."""
    limits = Limits(daily, per_channel, window, zone, bypass)
    assert Limits.from_json(limits.to_json()) == limits


@given(
    cap=caps,
    daily=st.none() | st.tuples(caps),
    window=st.none() | st.tuples(windows),
)
def test_campaign_rules_survive_a_round_trip_through_json(
    cap: int | None, daily: tuple[int | None] | None, window: tuple[QuietHours | None] | None
) -> None:
    """Any campaign rules, with or without each override, parse back from their JSON form unchanged."""
    rules = CampaignRules(
        cap=cap,
        has_daily_cap=daily is not None,
        daily_cap=daily[0] if daily else None,
        has_quiet_hours=window is not None,
        quiet_hours=window[0] if window else None,
    )
    assert CampaignRules.from_json(rules.to_json()) == rules
