"""The worked examples of docs/policy.md, checked against the policy functions."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from gateway.policy import QuietHours, local_day, quiet_hours_end

NIGHT = QuietHours.parse({"start": "21:00", "end": "08:00"})
UTC = timezone.utc


def test_sao_paulo_evening_is_deferred_to_eight_local_on_a_new_day() -> None:
    """22:30 in São Paulo on 1 June is deferred to 11:00 UTC on 2 June, a new day for the cap."""
    assert NIGHT is not None
    zone = ZoneInfo("America/Sao_Paulo")
    arrival = datetime(2026, 6, 2, 1, 30, tzinfo=UTC)
    end = quiet_hours_end(arrival, zone, NIGHT)
    assert end == datetime(2026, 6, 2, 11, 0, tzinfo=UTC)
    assert local_day(arrival, zone).isoformat() == "2026-06-01"
    assert local_day(end, zone).isoformat() == "2026-06-02"


def test_raw_address_uses_the_default_zone() -> None:
    """03:30 in Paris (summer time) is deferred to 06:00 UTC, 08:00 in Paris."""
    assert NIGHT is not None
    end = quiet_hours_end(datetime(2026, 6, 2, 1, 30, tzinfo=UTC), ZoneInfo("Europe/Paris"), NIGHT)
    assert end == datetime(2026, 6, 2, 6, 0, tzinfo=UTC)


def test_daytime_is_not_quiet() -> None:
    """13:00 UTC is 10:00 in São Paulo: no deferral."""
    assert NIGHT is not None
    zone = ZoneInfo("America/Sao_Paulo")
    assert quiet_hours_end(datetime(2026, 6, 1, 13, 0, tzinfo=UTC), zone, NIGHT) is None
