"""Promotional-message policy: quiet hours, daily-cap days and cap grants, in the recipient's zone.

Pure functions over ``datetime`` and ``zoneinfo``. The SQL side keeps the counters atomic; these
functions decide which calendar day a message counts against, whether it may go now, and when it
may go instead. Every instant passed in must be timezone-aware (a naive one raises
``ValueError``); every instant computed here is returned in UTC.

Quiet hours and daylight-saving time
------------------------------------
A window such as 21:00–08:00 is written on the recipient's wall clock, start inclusive, end
exclusive, crossing midnight when ``start > end``. Each night's window is turned into an interval
of instants by placing its start and its end on the time line with two rules:

* a wall-clock time that does not exist that day (spring-forward gap) happens at the moment the
  clocks jump over it. America/New_York, 2026-03-08, clocks jump 02:00 EST → 03:00 EDT: a window
  01:00–02:30 ends at 03:00 EDT (07:00 UTC);
* a wall-clock time that occurs twice (fall-back) happens at its first occurrence (``fold=0``).
  America/New_York, 2026-11-01, 01:00–02:00 is repeated: a window ending at 01:30 ends at
  01:30 EDT (05:30 UTC), not at 01:30 EST (06:30 UTC).

Everywhere else the end is simply the next ``end`` on the wall clock, however long the night is
in hours: 21:00–08:00 ends at 08:00 EDT (12:00 UTC) on the short night of 2026-03-08 and at
08:00 EST (13:00 UTC) on the long night of 2026-11-01.

"In quiet hours" means inside one of those intervals. That is the plain wall-clock comparison
except inside a repeated hour, where the wall clock alone is ambiguous: with 21:00–01:30 the
window has ended at 01:30 EDT, so 01:15 EST (06:15 UTC) is *not* quiet even though the clock
reads 01:15; with 01:30–08:00 the window began at 01:30 EDT, so 01:10 EST (06:10 UTC) *is*
quiet even though the clock reads 01:10. Without this, a message released at the end of the
window would be found quiet again and deferred a second time.

When a gap swallows the whole allowed period between two nights (allowed 02:15–02:45, clocks
jump 02:00 → 03:00), the next window starts the instant this one ends and quiet hours run on to
the next night's end: the clock never showed an allowed time that night.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "QuietHours",
    "QuietHoursCache",
    "grant_in_order",
    "in_quiet_hours",
    "local_day",
    "next_allowed",
    "quiet_hours_end",
    "resolve_zone",
    "valid_timezone",
]

# ASCII digits only: ``\d`` would also accept other scripts' digits.
_HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")

# Files in the tz database directory that are not zone names: they alias whatever the host is
# configured with, so a recipient's setting would silently depend on the server.
_HOST_ALIASES = frozenset({"localtime", "posixrules"})

_TICK = timedelta(microseconds=1)  # datetime's resolution, for bisecting to a transition


@dataclass(frozen=True)
class QuietHours:
    """A daily window on the recipient's wall clock, ``[start, end)``; crosses midnight when
    ``start > end``. Both are whole minutes without a time zone; ``start == end`` is refused.
    """

    start: time
    end: time

    def __post_init__(self) -> None:
        for field, value in (("start", self.start), ("end", self.end)):
            if not isinstance(value, time):
                raise ValueError(f"quiet hours {field} must be a time, got {value!r}")
            if value.tzinfo is not None or value.second or value.microsecond:
                raise ValueError(
                    f"quiet hours {field} must be a whole minute with no time zone, got {value!r}"
                )
        if self.start == self.end:
            # Could mean "never" or "all day"; refusing it makes the sender say which.
            raise ValueError(
                f"quiet hours start and end are both {self.start:%H:%M}: the window is meaningless"
            )

    @classmethod
    def parse(cls, obj: Mapping[str, object] | None) -> QuietHours | None:
        """``{"start": "HH:MM", "end": "HH:MM"}`` (00:00–23:59) to a window; ``None`` to none.

        Raises ``ValueError`` saying what is wrong for anything else, including extra keys.
        """
        if obj is None:
            return None
        if not isinstance(obj, Mapping):
            raise ValueError(
                f'quiet hours must be {{"start": "HH:MM", "end": "HH:MM"}} or null, '
                f"got {type(obj).__name__}"
            )
        if set(obj) != {"start", "end"}:
            got = ", ".join(sorted(map(repr, obj)))
            raise ValueError(f"quiet hours need exactly the keys 'start' and 'end', got {got}")
        return cls(_parse_hhmm(obj["start"], "start"), _parse_hhmm(obj["end"], "end"))

    def to_json(self) -> dict[str, str]:
        """The ``{"start": "HH:MM", "end": "HH:MM"}`` form that :meth:`parse` reads back."""
        return {"start": f"{self.start:%H:%M}", "end": f"{self.end:%H:%M}"}


def _parse_hhmm(value: object, field: str) -> time:
    match = _HHMM.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(
            f'quiet hours {field} must be "HH:MM" between 00:00 and 23:59, got {value!r}'
        )
    return time(int(match[1]), int(match[2]))


def local_day(instant: datetime, zone: ZoneInfo) -> date:
    """The calendar date in ``zone`` at ``instant``: the day a daily cap counts against."""
    _require_aware(instant)
    return instant.astimezone(zone).date()


def in_quiet_hours(instant: datetime, zone: ZoneInfo, window: QuietHours) -> bool:
    """Whether ``instant`` falls in ``window`` on the wall clock of ``zone``.

    Start inclusive, end exclusive. Inside a repeated (fall-back) hour the window's start and
    end are their first occurrences, so the answer follows the time line rather than the
    ambiguous clock reading (see the module docstring).
    """
    _require_aware(instant)
    return _interval_containing(instant.astimezone(UTC), zone, window) is not None


def quiet_hours_end(instant: datetime, zone: ZoneInfo, window: QuietHours) -> datetime | None:
    """When the quiet hours around ``instant`` end (UTC), or ``None`` when it is not in them.

    The end is the next ``window.end`` on the wall clock of ``zone``. If that time does not
    exist that day (spring-forward gap) the window ends at the moment the clocks jump:
    America/New_York 2026-03-08, 01:00–02:30 ends at 03:00 EDT = 07:00 UTC. If it occurs twice
    (fall-back), it ends at the first occurrence: America/New_York 2026-11-01, a window ending
    at 01:30 ends at 01:30 EDT = 05:30 UTC. The result is never itself in quiet hours.
    """
    _require_aware(instant)
    interval = _interval_containing(instant.astimezone(UTC), zone, window)
    return None if interval is None else _run_on(interval[1], zone, window)


def _run_on(end: datetime, zone: ZoneInfo, window: QuietHours) -> datetime:
    """The end of the quiet time that starts with the interval ending at ``end``."""
    # Only when a gap swallowed the allowed period does the next night's window start right
    # here; then nothing was allowed that night and the quiet runs on.
    while (following := _interval_containing(end, zone, window)) is not None:
        end = following[1]
    return end


class QuietHoursCache:
    """:func:`quiet_hours_end` with each (zone, window)'s intervals kept for its local day.

    Placing a night's window on the time line costs tens of microseconds (two wall-clock
    readings placed per night, three nights looked at), and a process asks the same few
    hundred (zone, window) pairs over and over. The intervals depend only on the recipient's
    local date, so they are kept until that date changes; the answers are exactly those of
    :func:`quiet_hours_end`. Bounded: forgets everything past ``max_entries`` pairs.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self._max_entries = max_entries
        self._days: dict[tuple[ZoneInfo, QuietHours], _Nights] = {}

    def end(self, instant: datetime, zone: ZoneInfo, window: QuietHours) -> datetime | None:
        """Same as ``quiet_hours_end(instant, zone, window)``."""
        _require_aware(instant)
        utc = instant.astimezone(UTC)
        today = _wall(utc, zone).date()
        key = (zone, window)
        nights = self._days.get(key)
        if nights is None or nights.day != today:
            if len(self._days) >= self._max_entries:
                self._days.clear()
            nights = self._days[key] = _Nights(today, zone, window)
        return nights.end(utc)


class _Nights:
    """The intervals :func:`_interval_containing` looks at for instants on one local ``day``."""

    __slots__ = ("day", "_zone", "_window", "_intervals", "_ends")

    def __init__(self, day: date, zone: ZoneInfo, window: QuietHours) -> None:
        self.day, self._zone, self._window = day, zone, window
        # The same nights, in the same order, as _interval_containing scans for this day.
        self._intervals = [_interval_on(day + timedelta(days=d), zone, window) for d in (-1, 0, 1)]
        self._ends: list[datetime | None] = [None, None, None]

    def end(self, utc: datetime) -> datetime | None:
        for index, (start, end) in enumerate(self._intervals):
            if start <= utc < end:
                found = self._ends[index]
                if found is None:
                    found = self._ends[index] = _run_on(end, self._zone, self._window)
                return found
        return None


def next_allowed(instant: datetime, zone: ZoneInfo, window: QuietHours | None) -> datetime:
    """The earliest moment a promotional message arriving at ``instant`` may be sent.

    ``instant`` itself (unchanged) when there are no quiet hours or it is outside them,
    otherwise :func:`quiet_hours_end` (UTC).
    """
    _require_aware(instant)
    if window is None:
        return instant
    end = quiet_hours_end(instant, zone, window)
    return instant if end is None else end


def grant_in_order(requests: Sequence[int], used: int, cap: int | None) -> list[bool]:
    """Which of ``requests`` (counts, in arrival order) fit under ``cap`` on a counter at ``used``.

    First come, first granted: each request is granted while it fits in the room left. A request
    bigger than the room left is refused *whole* (a message is never partly sent) and does not
    block the queue: a later, smaller request may still fit. A request of 0 always fits. A cap
    of ``None`` grants everything; a counter already over its cap has no room.
    """
    if used < 0:
        raise ValueError(f"used must be >= 0, got {used}")
    if cap is not None and cap < 0:
        raise ValueError(f"cap must be >= 0 or None, got {cap}")
    room = None if cap is None else max(0, cap - used)
    grants: list[bool] = []
    for count in requests:
        if count < 0:
            raise ValueError(f"a request counts >= 0 messages, got {count}")
        granted = room is None or count <= room
        if granted and room is not None:
            room -= count
        grants.append(granted)
    return grants


def resolve_zone(name: str | None, default: str) -> ZoneInfo:
    """The recipient's time zone ``name``, or ``default`` when it is ``None`` or empty.

    Raises ``ValueError`` naming the zone when it is not in the tz database.
    """
    key = name or default
    try:
        if key in _HOST_ALIASES:
            raise ZoneInfoNotFoundError(key)
        return ZoneInfo(key)
    # zoneinfo raises ValueError for malformed keys ("../x", "/etc/x", non-TZif files) and may
    # let OSError through for unreadable paths; to the caller they all mean "no such zone".
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(f"unknown time zone {key!r}") from exc


def valid_timezone(name: str) -> bool:
    """Whether ``name`` is a time zone :func:`resolve_zone` accepts (the empty string is not)."""
    if not name:
        return False
    try:
        resolve_zone(name, name)
    except ValueError:
        return False
    return True


# -- placing wall-clock times on the time line ---------------------------------------------------


def _require_aware(instant: datetime) -> None:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"instant must be timezone-aware, got naive {instant.isoformat()}")


def _wall(utc: datetime, zone: ZoneInfo) -> datetime:
    """The naive wall-clock reading in ``zone`` at a UTC instant."""
    return utc.astimezone(zone).replace(tzinfo=None)


def _first_instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant when the clocks in ``zone`` first read ``wall`` (naive), or, if they skip
    it, the instant they jump over it."""
    # Both folds are tried and kept only if they round-trip: a skipped reading round-trips for
    # neither, a repeated one for both. Comparing in UTC, because aware datetimes sharing a
    # tzinfo compare by wall clock and ignore fold.
    candidates = [wall.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1)]
    occurrences = [utc for utc in candidates if _wall(utc, zone) == wall]
    if occurrences:
        return min(occurrences)
    # In a gap the two folds land on either side of the jump: the clock reads less than ``wall``
    # at the earlier, more at the later. zoneinfo does not expose transitions, so bisect.
    before, after = min(candidates), max(candidates)
    while after - before > _TICK:
        middle = before + (after - before) // 2
        if _wall(middle, zone) >= wall:
            after = middle
        else:
            before = middle
    return after


def _interval_on(day: date, zone: ZoneInfo, window: QuietHours) -> tuple[datetime, datetime]:
    """The quiet interval ``[start, end)`` in UTC of the window that starts on ``day``."""
    end_day = day + timedelta(days=1) if window.start > window.end else day
    return (
        _first_instant(datetime.combine(day, window.start), zone),
        _first_instant(datetime.combine(end_day, window.end), zone),
    )


def _interval_containing(
    utc: datetime, zone: ZoneInfo, window: QuietHours
) -> tuple[datetime, datetime] | None:
    """The quiet interval that contains the UTC instant ``utc``, if any."""
    today = _wall(utc, zone).date()
    # Before its interval's end the clock reads less than that end, so the window started on
    # ``today`` or the day before; a fall-back across midnight can put the instant, by its
    # clock reading, on the day before the window that contains it.
    for days in (-1, 0, 1):
        start, end = _interval_on(today + timedelta(days=days), zone, window)
        if start <= utc < end:
            return start, end
    return None
