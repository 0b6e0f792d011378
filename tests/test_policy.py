"""Promotional policy, tested without fixtures: quiet hours across DST, local days, cap grants.

Worked examples give expected instants as hand-computed UTC literals. The properties run over
instants in 2000–2037, every zone of the tz database, and windows drawn both anywhere and around
the zone's clock changes, where quiet-hour arithmetic goes wrong if it is going to.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, available_timezones

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.policy import (
    QuietHours,
    QuietHoursCache,
    grant_in_order,
    in_quiet_hours,
    local_day,
    next_allowed,
    quiet_hours_end,
    resolve_zone,
    valid_timezone,
)

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")  # its DST moves the clocks by 30 minutes
APIA = ZoneInfo("Pacific/Apia")  # skipped 2011-12-30 entirely, moving across the date line

# Deterministic for CI, and no example database written into the working tree.
PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=300)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """A UTC instant: every expected value below is written this way, computed by hand."""
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def window(start: str, end: str) -> QuietHours:
    """A window from its JSON form."""
    parsed = QuietHours.parse({"start": start, "end": end})
    assert parsed is not None
    return parsed


NIGHT = window("21:00", "08:00")


# -- QuietHours ----------------------------------------------------------------------------------


def test_parse_reads_hh_mm_and_null() -> None:
    """A JSON window parses to wall-clock times, and null means no quiet hours."""
    assert QuietHours.parse({"start": "21:00", "end": "08:00"}) == QuietHours(time(21), time(8))
    assert QuietHours.parse({"start": "00:00", "end": "23:59"}) == QuietHours(time(0), time(23, 59))
    assert QuietHours.parse(None) is None


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"start": "24:00", "end": "08:00"}, 'start must be "HH:MM"'),
        ({"start": "21:00", "end": "08:60"}, 'end must be "HH:MM"'),
        ({"start": "9:00", "end": "08:00"}, 'start must be "HH:MM"'),
        ({"start": "21:00:00", "end": "08:00"}, 'start must be "HH:MM"'),
        ({"start": "21:00\n", "end": "08:00"}, 'start must be "HH:MM"'),
        ({"start": "２１:００", "end": "08:00"}, 'start must be "HH:MM"'),  # fullwidth digits
        ({"start": 2100, "end": "08:00"}, 'start must be "HH:MM"'),
        ({"start": "21:00"}, "exactly the keys"),
        ({"start": "21:00", "end": "08:00", "tz": "UTC"}, "exactly the keys"),
        ({"start": "08:00", "end": "08:00"}, "meaningless"),
        (["21:00", "08:00"], "or null"),
    ],
)
def test_parse_refuses_anything_else_saying_why(obj: object, message: str) -> None:
    """Out-of-range, loose, incomplete, over-full or empty windows raise a ValueError naming the
    problem."""
    with pytest.raises(ValueError, match=message):
        QuietHours.parse(obj)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("start", "end"),
    [(time(21, 0, 30), time(8)), (time(21), time(8, tzinfo=UTC)), (time(8), time(8))],
)
def test_constructor_keeps_the_same_invariants(start: time, end: time) -> None:
    """Built directly, a window still needs whole minutes without a zone, and distinct ends."""
    with pytest.raises(ValueError):
        QuietHours(start, end)


def _minute_of_day(minute: int) -> time:
    return time(minute // 60 % 24, minute % 60)


any_minute = st.integers(min_value=0, max_value=24 * 60 - 1).map(_minute_of_day)
any_window = (
    st.tuples(any_minute, any_minute)
    .filter(lambda pair: pair[0] != pair[1])
    .map(lambda pair: QuietHours(*pair))
)


@PROPERTY
@given(any_window)
def test_to_json_round_trips(quiet: QuietHours) -> None:
    """parse(to_json()) gives back the same window."""
    assert QuietHours.parse(quiet.to_json()) == quiet


# -- worked examples: no clock change --------------------------------------------------------------


@pytest.mark.parametrize(
    ("local", "end"),
    [
        (datetime(2026, 1, 15, 22, 30, tzinfo=PARIS), utc(2026, 1, 16, 7)),  # CET, UTC+1
        (datetime(2026, 1, 16, 7, 59, tzinfo=PARIS), utc(2026, 1, 16, 7)),
        (datetime(2026, 1, 15, 21, 0, tzinfo=PARIS), utc(2026, 1, 16, 7)),  # start is inclusive
        (datetime(2026, 7, 15, 22, 30, tzinfo=PARIS), utc(2026, 7, 16, 6)),  # CEST, UTC+2
    ],
)
def test_night_window_in_paris_ends_at_eight_next_morning(local: datetime, end: datetime) -> None:
    """Inside 21:00–08:00 in Paris the window ends at 08:00 Paris time the next morning."""
    assert in_quiet_hours(local, PARIS, NIGHT)
    assert quiet_hours_end(local, PARIS, NIGHT) == end
    assert next_allowed(local, PARIS, NIGHT) == end


@pytest.mark.parametrize(
    "local",
    [datetime(2026, 1, 16, 8, 0, tzinfo=PARIS), datetime(2026, 1, 15, 20, 59, tzinfo=PARIS)],
)
def test_outside_the_night_window_in_paris_sends_now(local: datetime) -> None:
    """At 08:00 (end exclusive) and 20:59 the window is not in force and the message goes at
    once."""
    assert not in_quiet_hours(local, PARIS, NIGHT)
    assert quiet_hours_end(local, PARIS, NIGHT) is None
    assert next_allowed(local, PARIS, NIGHT) is local


def test_daytime_window_not_crossing_midnight() -> None:
    """A 12:00–14:00 window holds from noon to just before two, the same day."""
    lunch = window("12:00", "14:00")
    assert quiet_hours_end(datetime(2026, 1, 15, 12, 0, tzinfo=PARIS), PARIS, lunch) == utc(
        2026, 1, 15, 13
    )
    assert quiet_hours_end(datetime(2026, 1, 15, 13, 59, tzinfo=PARIS), PARIS, lunch) == utc(
        2026, 1, 15, 13
    )
    assert not in_quiet_hours(datetime(2026, 1, 15, 11, 59, tzinfo=PARIS), PARIS, lunch)
    assert not in_quiet_hours(datetime(2026, 1, 15, 14, 0, tzinfo=PARIS), PARIS, lunch)
    assert not in_quiet_hours(datetime(2026, 1, 15, 23, 0, tzinfo=PARIS), PARIS, lunch)


def test_no_window_always_allows() -> None:
    """Without quiet hours a message may go the moment it arrives."""
    arrival = datetime(2026, 1, 15, 3, 0, tzinfo=PARIS)
    assert next_allowed(arrival, PARIS, None) is arrival


def test_result_is_the_same_whatever_zone_the_instant_is_written_in() -> None:
    """An instant written in UTC or in another zone is the same instant to every function."""
    as_paris = datetime(2026, 1, 15, 22, 30, tzinfo=PARIS)
    as_utc = utc(2026, 1, 15, 21, 30)
    as_tokyo = as_utc.astimezone(ZoneInfo("Asia/Tokyo"))
    for same in (as_utc, as_tokyo):
        assert in_quiet_hours(same, PARIS, NIGHT) == in_quiet_hours(as_paris, PARIS, NIGHT)
        assert quiet_hours_end(same, PARIS, NIGHT) == quiet_hours_end(as_paris, PARIS, NIGHT)
        assert local_day(same, PARIS) == date(2026, 1, 15)


def test_naive_instants_are_refused() -> None:
    """A naive datetime has no instant, so every function raises ValueError."""
    naive = datetime(2026, 1, 15, 22, 30)
    with pytest.raises(ValueError, match="timezone-aware"):
        local_day(naive, PARIS)
    with pytest.raises(ValueError, match="timezone-aware"):
        in_quiet_hours(naive, PARIS, NIGHT)
    with pytest.raises(ValueError, match="timezone-aware"):
        quiet_hours_end(naive, PARIS, NIGHT)
    with pytest.raises(ValueError, match="timezone-aware"):
        next_allowed(naive, PARIS, None)


def test_local_day_is_the_recipients_calendar_day() -> None:
    """23:30 UTC on 15 January is already 16 January in Paris and still 15 January in New York."""
    instant = utc(2026, 1, 15, 23, 30)
    assert local_day(instant, PARIS) == date(2026, 1, 16)
    assert local_day(instant, NEW_YORK) == date(2026, 1, 15)


# -- worked examples: clocks change ----------------------------------------------------------------
# New York 2026-03-08: 02:00 EST (07:00 UTC) becomes 03:00 EDT. 2026-11-01: 02:00 EDT (06:00 UTC)
# becomes 01:00 EST, so 01:00–02:00 happens twice (fold=0 is EDT, UTC-4; fold=1 is EST, UTC-5).


def test_new_york_end_in_the_spring_gap_is_when_the_clocks_jump() -> None:
    """01:00–02:30 on the spring-forward night ends at 03:00 EDT (07:00 UTC): 02:30 never
    happens."""
    quiet = window("01:00", "02:30")
    for arrival in (utc(2026, 3, 8, 6, 30), datetime(2026, 3, 8, 1, 59, 59, tzinfo=NEW_YORK)):
        assert quiet_hours_end(arrival, NEW_YORK, quiet) == utc(2026, 3, 8, 7)
    assert not in_quiet_hours(utc(2026, 3, 8, 7), NEW_YORK, quiet)


def test_new_york_start_in_the_spring_gap_is_when_the_clocks_jump() -> None:
    """02:30–06:00 on the spring-forward night starts at 03:00 EDT (07:00 UTC) and ends at 06:00
    EDT."""
    quiet = window("02:30", "06:00")
    assert not in_quiet_hours(datetime(2026, 3, 8, 1, 59, tzinfo=NEW_YORK), NEW_YORK, quiet)
    assert quiet_hours_end(utc(2026, 3, 8, 7), NEW_YORK, quiet) == utc(2026, 3, 8, 10)


def test_new_york_short_night_still_ends_at_eight_on_the_wall_clock() -> None:
    """21:00–08:00 across the spring-forward night ends at 08:00 EDT (12:00 UTC), 10 hours after it
    began."""
    arrival = datetime(2026, 3, 7, 22, 0, tzinfo=NEW_YORK)  # EST: 03:00 UTC on the 8th
    assert quiet_hours_end(arrival, NEW_YORK, NIGHT) == utc(2026, 3, 8, 12)
    began = utc(2026, 3, 8, 2)  # 21:00 EST
    assert in_quiet_hours(began, NEW_YORK, NIGHT)
    assert not in_quiet_hours(began - timedelta(microseconds=1), NEW_YORK, NIGHT)
    assert utc(2026, 3, 8, 12) - began == timedelta(hours=10)


def test_new_york_end_in_the_repeated_hour_is_its_first_occurrence() -> None:
    """21:00–01:30 on the fall-back night ends at the first 01:30, EDT (05:30 UTC), not the EST
    one."""
    quiet = window("21:00", "01:30")
    assert quiet_hours_end(datetime(2026, 10, 31, 23, 0, tzinfo=NEW_YORK), NEW_YORK, quiet) == utc(
        2026, 11, 1, 5, 30
    )
    first_0115 = datetime(2026, 11, 1, 1, 15, fold=0, tzinfo=NEW_YORK)  # 05:15 UTC
    assert quiet_hours_end(first_0115, NEW_YORK, quiet) == utc(2026, 11, 1, 5, 30)


def test_new_york_repeated_hour_after_the_window_ended_is_not_quiet() -> None:
    """The second 01:15 (EST, 06:15 UTC) reads inside 21:00–01:30, but that night's window has
    already ended."""
    quiet = window("21:00", "01:30")
    second_0115 = datetime(2026, 11, 1, 1, 15, fold=1, tzinfo=NEW_YORK)
    # Via UTC: PEP 495 makes a fold=1 reading compare unequal to every other zone's datetime.
    assert second_0115.astimezone(UTC) == utc(2026, 11, 1, 6, 15)
    assert not in_quiet_hours(second_0115, NEW_YORK, quiet)
    assert next_allowed(second_0115, NEW_YORK, quiet) is second_0115


def test_new_york_repeated_hour_after_the_window_began_is_quiet() -> None:
    """01:30–08:00 began at the first 01:30 (EDT), so the second 01:10 (EST, 06:10 UTC) is quiet
    though it reads 01:10."""
    quiet = window("01:30", "08:00")
    assert not in_quiet_hours(
        datetime(2026, 11, 1, 1, 10, fold=0, tzinfo=NEW_YORK), NEW_YORK, quiet
    )
    second_0110 = datetime(2026, 11, 1, 1, 10, fold=1, tzinfo=NEW_YORK)
    assert second_0110.astimezone(UTC) == utc(2026, 11, 1, 6, 10)
    assert quiet_hours_end(second_0110, NEW_YORK, quiet) == utc(2026, 11, 1, 13)  # 08:00 EST


def test_new_york_long_night_still_ends_at_eight_on_the_wall_clock() -> None:
    """21:00–08:00 across the fall-back night ends at 08:00 EST (13:00 UTC), 12 hours after it
    began."""
    arrival = datetime(2026, 10, 31, 21, 0, tzinfo=NEW_YORK)  # EDT: 01:00 UTC on the 1st
    assert quiet_hours_end(arrival, NEW_YORK, NIGHT) == utc(2026, 11, 1, 13)
    assert utc(2026, 11, 1, 13) - arrival == timedelta(hours=12)


def test_new_york_gap_swallowing_the_allowed_period_keeps_the_quiet() -> None:
    """With 02:45–02:15 the clocks jump over the whole allowed 02:15–02:45 on 2026-03-08, so nothing
    is allowed until 02:15 EDT on the 9th."""
    quiet = window("02:45", "02:15")
    arrival = datetime(2026, 3, 7, 3, 0, tzinfo=NEW_YORK)  # EST: 08:00 UTC
    assert in_quiet_hours(utc(2026, 3, 8, 7), NEW_YORK, quiet)  # 03:00 EDT, just after the jump
    assert quiet_hours_end(arrival, NEW_YORK, quiet) == utc(2026, 3, 9, 6, 15)


# London 2026-03-29: 01:00 GMT (01:00 UTC) becomes 02:00 BST. 2026-10-25: 02:00 BST (01:00 UTC)
# becomes 01:00 GMT.


def test_london_spring_gap_and_fall_back() -> None:
    """In London a window ending in the gap ends at 02:00 BST; one ending in the repeated hour ends
    at its BST occurrence."""
    assert quiet_hours_end(
        datetime(2026, 3, 28, 23, 30, tzinfo=LONDON), LONDON, window("23:00", "01:30")
    ) == utc(2026, 3, 29, 1)
    to_0130 = window("23:00", "01:30")
    assert quiet_hours_end(datetime(2026, 10, 24, 23, 30, tzinfo=LONDON), LONDON, to_0130) == utc(
        2026, 10, 25, 0, 30
    )
    assert not in_quiet_hours(utc(2026, 10, 25, 1, 15), LONDON, to_0130)  # 01:15 GMT, second time
    assert quiet_hours_end(datetime(2026, 10, 24, 22, 0, tzinfo=LONDON), LONDON, NIGHT) == utc(
        2026, 10, 25, 8
    )


# Lord Howe 2026-04-05: 02:00 +11:00 (15:00 UTC on the 4th) becomes 01:30 +10:30.
# 2026-10-04: 02:00 +10:30 (15:30 UTC on the 3rd) becomes 02:30 +11:00.


def test_lord_howe_half_hour_changes() -> None:
    """Lord Howe's 30-minute changes follow the same rules: the jump for a skipped end, the first
    occurrence for a repeated one."""
    assert quiet_hours_end(
        datetime(2026, 10, 3, 23, 0, tzinfo=LORD_HOWE), LORD_HOWE, window("22:00", "02:15")
    ) == utc(2026, 10, 3, 15, 30)
    to_0145 = window("22:00", "01:45")
    assert quiet_hours_end(
        datetime(2026, 4, 4, 23, 0, tzinfo=LORD_HOWE), LORD_HOWE, to_0145
    ) == utc(2026, 4, 4, 14, 45)
    assert not in_quiet_hours(utc(2026, 4, 4, 15, 5), LORD_HOWE, to_0145)  # 01:35 +10:30
    assert quiet_hours_end(datetime(2026, 4, 4, 22, 0, tzinfo=LORD_HOWE), LORD_HOWE, NIGHT) == utc(
        2026, 4, 4, 21, 30
    )


def test_apia_skipped_day() -> None:
    """Apia jumped from 2011-12-29 24:00 (-10) to 2011-12-31 00:00 (+14): the night runs on to 08:00
    on the 31st."""
    arrival = datetime(2011, 12, 29, 22, 0, tzinfo=APIA)  # 08:00 UTC on the 30th
    assert quiet_hours_end(arrival, APIA, NIGHT) == utc(2011, 12, 30, 18)


# -- properties: quiet hours -----------------------------------------------------------------------

# "localtime" and "posixrules" alias the host's own zone: not the same on every machine.
ZONE_NAMES = sorted(available_timezones() - {"localtime", "posixrules"})
EARLIEST = datetime(2000, 1, 1)
LATEST = datetime(2037, 12, 31, 23, 59, 59)
TICK = timedelta(microseconds=1)


def _wall(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def _next_clock_change(zone: ZoneInfo, after: datetime) -> datetime | None:
    """The first instant within about a year of ``after`` at which ``zone`` changes its offset."""
    before = after
    for _ in range(400):
        later = before + timedelta(days=1)
        if later.astimezone(zone).utcoffset() != before.astimezone(zone).utcoffset():
            while later - before > timedelta(seconds=1):
                middle = before + (later - before) // 2
                if middle.astimezone(zone).utcoffset() == before.astimezone(zone).utcoffset():
                    before = middle
                else:
                    later = middle
            return later
        before = later
    return None


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[ZoneInfo, datetime, QuietHours]:
    """A zone, an instant and a window; half the time both sit around one of the zone's clock
    changes."""
    zone = ZoneInfo(draw(st.sampled_from(ZONE_NAMES)))
    instant = draw(st.datetimes(EARLIEST, LATEST, timezones=st.just(UTC)))
    change = _next_clock_change(zone, instant) if draw(st.booleans()) else None
    times = any_minute
    if change is not None:
        instant = change + timedelta(seconds=draw(st.integers(-26 * 3600, 26 * 3600)))
        reading = _wall(change - TICK, zone)
        around = reading.hour * 60 + reading.minute
        times = st.one_of(
            st.integers(around - 90, around + 90).map(lambda m: _minute_of_day(m % 1440)),
            any_minute,
        )
    start, end = draw(times), draw(times)
    assume(start != end)
    return zone, instant, QuietHours(start, end)


def _longest_fall_back(zone: ZoneInfo) -> timedelta:
    # Antarctica/Casey has switched between +08 and +11; in 2000–2037 no other zone sets its
    # clocks back by more than 2 hours (Davis, Troll, Vostok, Chita, Magadan by 2).
    return timedelta(hours=3) if zone.key == "Antarctica/Casey" else timedelta(hours=2)


def _exists(reading: datetime, zone: ZoneInfo) -> bool:
    return any(
        _wall(reading.replace(tzinfo=zone, fold=fold).astimezone(UTC), zone) == reading
        for fold in (0, 1)
    )


def _allowed_period_skipped(zone: ZoneInfo, quiet: QuietHours, lo: datetime, hi: datetime) -> bool:
    """Whether, between ``lo`` and ``hi``, the clocks jump over a whole allowed period [end,
    start)."""
    day = _wall(lo, zone).date() - timedelta(days=1)
    while day <= _wall(hi, zone).date():
        allowed_from = datetime.combine(day, quiet.end)
        start_day = day if quiet.end < quiet.start else day + timedelta(days=1)
        allowed_to = datetime.combine(start_day, quiet.start)
        minute = allowed_from
        while minute < allowed_to and not _exists(minute, zone):
            minute += timedelta(minutes=1)
        if minute >= allowed_to:
            return True
        day += timedelta(days=1)
    return False


@PROPERTY
@given(scenarios(), st.lists(st.integers(-30 * 3600, 30 * 3600), min_size=1, max_size=12))
def test_the_cache_answers_as_quiet_hours_end_as_time_moves_on(
    scenario: tuple[ZoneInfo, datetime, QuietHours], offsets: list[int],
) -> None:
    """One cache asked about instants around a clock change, in any order and across local
    days (a small bound, so it also forgets): each answer is quiet_hours_end's."""
    zone, instant, quiet = scenario
    cache, kathmandu = QuietHoursCache(max_entries=2), ZoneInfo("Asia/Kathmandu")
    other = QuietHours(quiet.end, quiet.start)
    for offset in offsets:
        moment = instant + timedelta(seconds=offset)
        assert cache.end(moment, zone, quiet) == quiet_hours_end(moment, zone, quiet)
        assert cache.end(moment, kathmandu, other) == quiet_hours_end(moment, kathmandu, other)


@PROPERTY
@given(scenarios())
def test_next_allowed_is_never_earlier(scenario: tuple[ZoneInfo, datetime, QuietHours]) -> None:
    """A message is never scheduled before it arrived."""
    zone, instant, quiet = scenario
    assert next_allowed(instant, zone, quiet) >= instant


@PROPERTY
@given(scenarios())
def test_next_allowed_is_never_in_quiet_hours(
    scenario: tuple[ZoneInfo, datetime, QuietHours],
) -> None:
    """The moment a deferred message is released is outside quiet hours, and the moment before it is
    inside."""
    zone, instant, quiet = scenario
    released = next_allowed(instant, zone, quiet)
    assert not in_quiet_hours(released, zone, quiet)
    if released != instant:
        assert in_quiet_hours(released - TICK, zone, quiet)


@PROPERTY
@given(scenarios())
def test_outside_quiet_hours_next_allowed_is_the_instant(
    scenario: tuple[ZoneInfo, datetime, QuietHours],
) -> None:
    """Outside quiet hours a message goes the moment it arrives; inside, it waits."""
    zone, instant, quiet = scenario
    if in_quiet_hours(instant, zone, quiet):
        assert next_allowed(instant, zone, quiet) > instant
    else:
        assert quiet_hours_end(instant, zone, quiet) is None
        assert next_allowed(instant, zone, quiet) is instant


@PROPERTY
@given(scenarios())
def test_deferral_is_shorter_than_a_day_plus_the_largest_fall_back(
    scenario: tuple[ZoneInfo, datetime, QuietHours],
) -> None:
    """A deferral lasts under 24 h plus the zone's largest fall-back (2 h, or 3 h at Casey), unless
    a gap skipped a whole allowed period."""
    zone, instant, quiet = scenario
    delay = next_allowed(instant, zone, quiet) - instant
    if delay >= timedelta(hours=24) + _longest_fall_back(zone):
        assert _allowed_period_skipped(zone, quiet, instant, instant + delay)
        assert delay < timedelta(hours=48) + _longest_fall_back(zone)


@PROPERTY
@given(scenarios())
def test_next_allowed_is_idempotent(scenario: tuple[ZoneInfo, datetime, QuietHours]) -> None:
    """Asking again at the release moment releases at that same moment."""
    zone, instant, quiet = scenario
    released = next_allowed(instant, zone, quiet)
    assert next_allowed(released, zone, quiet) == released


@PROPERTY
@given(scenarios())
def test_deferral_ends_at_end_on_the_wall_clock_or_at_the_jump_over_it(
    scenario: tuple[ZoneInfo, datetime, QuietHours],
) -> None:
    """The window ends in UTC when the local clock reads its end, or, if the clocks skip that
    reading, the instant they jump."""
    zone, instant, quiet = scenario
    end = quiet_hours_end(instant, zone, quiet)
    assume(end is not None)
    assert end is not None and end.tzinfo is UTC
    reading = _wall(end, zone)
    if reading.time() != quiet.end:
        just_before = _wall(end - TICK, zone)
        skipped = [
            datetime.combine(just_before.date() + timedelta(days=days), quiet.end)
            for days in range((reading.date() - just_before.date()).days + 1)
        ]
        assert any(just_before < moment < reading for moment in skipped)


@PROPERTY
@given(scenarios())
def test_quiet_hours_follow_the_wall_clock_outside_repeated_hours(
    scenario: tuple[ZoneInfo, datetime, QuietHours],
) -> None:
    """When the local reading happens only once, in quiet hours is the plain comparison [start, end)
    on the wall clock."""
    zone, instant, quiet = scenario
    local = instant.astimezone(zone)
    assume(local.replace(fold=0).utcoffset() == local.replace(fold=1).utcoffset())
    now = local.time()
    if quiet.start < quiet.end:
        expected = quiet.start <= now < quiet.end
    else:
        expected = now >= quiet.start or now < quiet.end
    assert in_quiet_hours(instant, zone, quiet) == expected


@PROPERTY
@given(
    st.sampled_from(ZONE_NAMES).map(ZoneInfo),
    st.datetimes(EARLIEST, LATEST, timezones=st.just(UTC)),
    st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m))),
)
def test_local_day_is_the_date_in_the_zone(
    zone: ZoneInfo, instant: datetime, written_in: timezone
) -> None:
    """local_day is the instant's calendar date in the zone, however the instant is written."""
    assert local_day(instant, zone) == instant.astimezone(zone).date()
    assert local_day(instant.astimezone(written_in), zone) == local_day(instant, zone)


# -- grant_in_order --------------------------------------------------------------------------------


def test_grants_first_come_first_served_and_lets_smaller_requests_through() -> None:
    """A request too big for the room left is refused whole, but a later one that fits is
    granted."""
    assert grant_in_order([2, 3, 1], used=0, cap=3) == [True, False, True]
    assert grant_in_order([3, 1, 2], used=0, cap=3) == [True, False, False]
    assert grant_in_order([1, 1, 1], used=5, cap=3) == [False, False, False]
    assert grant_in_order([0, 1], used=3, cap=3) == [True, False]
    assert grant_in_order([], used=0, cap=0) == []


@pytest.mark.parametrize(("requests", "used", "cap"), [([-1], 0, 3), ([1], -1, 3), ([1], 0, -1)])
def test_grant_refuses_negative_counts(requests: list[int], used: int, cap: int) -> None:
    """Negative requests, counters or caps are caller bugs and raise ValueError."""
    with pytest.raises(ValueError):
        grant_in_order(requests, used, cap)


counts = st.integers(min_value=0, max_value=60)


@PROPERTY
@given(st.integers(min_value=0, max_value=60), counts, counts)
def test_unit_requests_grant_exactly_the_room_left_to_the_first_ones(
    n: int, used: int, cap: int
) -> None:
    """With unit requests exactly min(n, max(0, cap - used)) are granted, and they are the first
    ones."""
    granted = min(n, max(0, cap - used))
    assert grant_in_order([1] * n, used, cap) == [True] * granted + [False] * (n - granted)


@PROPERTY
@given(st.lists(st.integers(min_value=0, max_value=10), max_size=30), counts, counts)
def test_grants_never_take_the_counter_over_the_cap(
    requests: list[int], used: int, cap: int
) -> None:
    """Granted counts never push the counter past its cap, and each refusal was for a request bigger
    than the room left."""
    grants = grant_in_order(requests, used, cap)
    assert len(grants) == len(requests)
    counter = used
    for count, granted in zip(requests, grants, strict=True):
        if granted:
            counter += count
            assert counter <= max(cap, used)
        else:
            assert counter + count > cap


@PROPERTY
@given(st.lists(st.integers(min_value=0, max_value=10**6), max_size=30), counts)
def test_no_cap_grants_everything(requests: list[int], used: int) -> None:
    """Without a cap every request is granted."""
    assert grant_in_order(requests, used, None) == [True] * len(requests)


# -- zones -----------------------------------------------------------------------------------------


def test_resolve_zone_uses_the_users_zone_or_the_default() -> None:
    """A user's zone wins; None or an empty string fall back to the default."""
    assert resolve_zone("America/New_York", "Europe/Paris") == NEW_YORK
    assert resolve_zone(None, "Europe/Paris") == PARIS
    assert resolve_zone("", "Europe/Paris") == PARIS


@pytest.mark.parametrize(
    "name",
    [
        "Mars/Olympus_Mons",
        "europe/paris",
        "../../etc/passwd",
        "/etc/localtime",
        "zone.tab",
        "localtime",
    ],
)
def test_resolve_zone_names_the_unknown_zone(name: str) -> None:
    """An unknown zone, a path, a non-zone file or a host alias raises ValueError naming it."""
    with pytest.raises(ValueError, match="unknown time zone") as raised:
        resolve_zone(name, "Europe/Paris")
    assert repr(name) in str(raised.value)
    assert not valid_timezone(name)


def test_unknown_default_zone_is_named_too() -> None:
    """A bad default is reported like a bad user zone."""
    with pytest.raises(ValueError, match="'Nowhere/Town'"):
        resolve_zone(None, "Nowhere/Town")


def test_valid_timezone() -> None:
    """Known IANA names are valid; the empty string is not."""
    assert valid_timezone("Europe/Paris")
    assert valid_timezone("UTC")
    assert not valid_timezone("")
