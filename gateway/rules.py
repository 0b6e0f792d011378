"""Stored policy rules, parsed: the global limits and the rules of one campaign (pure).

``PUT /v1/limits`` and ``PUT /v1/campaigns/{id}`` validate a request and store the ``to_json``
form of these classes; the pipeline reads the stored JSON back with ``from_json``. Keys that
are missing take their defaults, so rules written before a key existed still parse.

A campaign keeps the difference between a rule it does not set and a rule it sets to ``null``:
``{"cap": 3}`` follows the global daily cap and quiet hours, ``{"cap": 3, "daily_cap": null}``
has no daily cap at all, whatever the global one is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from gateway.policy import QuietHours, valid_timezone

__all__ = [
    "CHANNELS",
    "CampaignRules",
    "Limits",
    "bypasses_policy",
    "effective_daily_cap",
    "effective_quiet_hours",
]

CHANNELS = ("email", "sms", "push")


@dataclass(frozen=True)
class Limits:
    """The global policy set by ``PUT /v1/limits``.

    ``daily_cap``: most messages one user (or raw address) receives per calendar day in its
    time zone, all channels together; ``daily_cap_per_channel``: the same, counted on one
    channel; ``None`` means no cap. ``default_timezone`` is the zone of users without one and
    of raw addresses. ``transactional_bypass``: transactional jobs skip caps and quiet hours.
    """

    daily_cap: int | None = None
    daily_cap_per_channel: dict[str, int | None] = field(default_factory=dict)
    quiet_hours: QuietHours | None = None
    default_timezone: str = "UTC"
    transactional_bypass: bool = True

    def __post_init__(self) -> None:
        _check_cap(self.daily_cap, "daily_cap")
        for channel, cap in self.daily_cap_per_channel.items():
            if channel not in CHANNELS:
                raise ValueError(f"daily_cap_per_channel: unknown channel {channel!r}")
            _check_cap(cap, f"daily_cap_per_channel.{channel}")
        if not isinstance(self.default_timezone, str) or not valid_timezone(self.default_timezone):
            raise ValueError(f"default_timezone: unknown time zone {self.default_timezone!r}")
        if not isinstance(self.transactional_bypass, bool):
            raise ValueError("transactional_bypass must be true or false")

    @classmethod
    def from_json(cls, obj: Mapping[str, Any] | None) -> Limits:
        """Parse stored JSON; the defaults (no caps, no quiet hours, UTC, bypass) for ``None``.

        Raises ``ValueError`` naming the key when a value has the wrong type or range.
        """
        if obj is None:
            return cls()
        per_channel = obj.get("daily_cap_per_channel") or {}
        if not isinstance(per_channel, Mapping):
            raise ValueError("daily_cap_per_channel must be an object")
        return cls(
            daily_cap=obj.get("daily_cap"),
            daily_cap_per_channel=dict(per_channel),
            quiet_hours=QuietHours.parse(obj.get("quiet_hours")),
            # null reads as "not set", like a missing key.
            default_timezone=obj.get("default_timezone") or "UTC",
            transactional_bypass=_true_unless_false(obj.get("transactional_bypass")),
        )

    def to_json(self) -> dict[str, Any]:
        """The normal stored form: every key present, channels in a fixed order."""
        return {
            "daily_cap": self.daily_cap,
            "daily_cap_per_channel": {
                c: self.daily_cap_per_channel[c]
                for c in CHANNELS
                if c in self.daily_cap_per_channel
            },
            "quiet_hours": self.quiet_hours.to_json() if self.quiet_hours else None,
            "default_timezone": self.default_timezone,
            "transactional_bypass": self.transactional_bypass,
        }


@dataclass(frozen=True)
class CampaignRules:
    """Rules of one campaign; ``has_*`` tell an override (even to ``None``) from no override.

    ``cap``: most messages one user receives from this campaign, ever (``None``: no cap).
    """

    cap: int | None = None
    has_daily_cap: bool = False
    daily_cap: int | None = None
    has_quiet_hours: bool = False
    quiet_hours: QuietHours | None = None

    def __post_init__(self) -> None:
        _check_cap(self.cap, "cap")
        _check_cap(self.daily_cap, "daily_cap")
        # A value without its flag would be silently ignored by effective_*: refuse it.
        if not self.has_daily_cap and self.daily_cap is not None:
            raise ValueError("daily_cap is set but has_daily_cap is false")
        if not self.has_quiet_hours and self.quiet_hours is not None:
            raise ValueError("quiet_hours is set but has_quiet_hours is false")

    @classmethod
    def from_json(cls, obj: Mapping[str, Any] | None) -> CampaignRules:
        """Parse stored JSON: a key that is present overrides the global rule, even with null."""
        if obj is None:
            return cls()
        return cls(
            cap=obj.get("cap"),
            has_daily_cap="daily_cap" in obj,
            daily_cap=obj.get("daily_cap"),
            has_quiet_hours="quiet_hours" in obj,
            quiet_hours=QuietHours.parse(obj.get("quiet_hours")),
        )

    def to_json(self) -> dict[str, Any]:
        """The stored form: ``cap`` always, an override only when the campaign has it."""
        stored: dict[str, Any] = {"cap": self.cap}
        if self.has_daily_cap:
            stored["daily_cap"] = self.daily_cap
        if self.has_quiet_hours:
            stored["quiet_hours"] = self.quiet_hours.to_json() if self.quiet_hours else None
        return stored


def effective_daily_cap(limits: Limits, campaign: CampaignRules | None) -> int | None:
    """The campaign's daily cap when it overrides the global one, else the global one."""
    if campaign is not None and campaign.has_daily_cap:
        return campaign.daily_cap
    return limits.daily_cap


def effective_quiet_hours(limits: Limits, campaign: CampaignRules | None) -> QuietHours | None:
    """The campaign's quiet hours when it overrides the global ones, else the global ones."""
    if campaign is not None and campaign.has_quiet_hours:
        return campaign.quiet_hours
    return limits.quiet_hours


def bypasses_policy(limits: Limits, kind: str) -> bool:
    """Whether a job of ``kind`` skips caps and quiet hours (transactional, unless turned off)."""
    return kind == "transactional" and limits.transactional_bypass


def _true_unless_false(value: Any) -> Any:
    return True if value is None else value


def _check_cap(value: object, name: str) -> None:
    # bool is an int in Python; a cap of ``true`` is a mistake, not 1.
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"{name} must be an integer >= 0 or null, got {value!r}")
