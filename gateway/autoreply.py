"""Which auto-reply an inbound message gets, if any. Pure.

Two steps. :func:`due_reply` says what the keyword asks for: the number's stop text (only when
the STOP changed something: one confirmation, never two), its start or help text, a custom
keyword's reply, nothing for an ordinary message. :func:`decide_reply` then withholds it to
avoid reply loops with machines: never to a short code or an alphanumeric sender (they cannot
read, and another gateway's auto-reply would answer ours), and at most ``max_per_hour`` replies
per sender per number per hour.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from gateway.numbers import NumberConfig
from keywords import Action, Match

__all__ = ["Reply", "Withheld", "accepts_replies", "decide_reply", "due_reply"]

# E.164 with more than 8 digits: shorter "numbers" are short codes, not phones.
_PHONE = re.compile(r"\+[1-9][0-9]{8,14}")


class Withheld(str, Enum):
    """Why a due reply was not sent."""

    not_a_phone = "not_a_phone"  # a short code or an alphanumeric sender
    hourly_limit = "hourly_limit"


@dataclass(frozen=True, slots=True)
class Reply:
    """The text to answer with (``None``: no answer) and, when a due reply was held back, why."""

    text: str | None
    withheld: Withheld | None = None


def accepts_replies(sender: str) -> bool:
    """Whether ``sender`` is a phone number we may answer: E.164 with more than 8 digits."""
    return _PHONE.fullmatch(sender) is not None


def due_reply(found: Match, config: NumberConfig, *, newly_opted_out: bool) -> str | None:
    """The reply the keyword asks for before loop protection; ``None`` for none."""
    if found.action is Action.opt_out:
        return config.stop_text if newly_opted_out else None
    if found.action is Action.opt_in:
        return config.start_text
    if found.action is Action.help:
        return config.help_text
    if found.action is Action.custom:
        return found.reply
    return None


def decide_reply(
    due: str | None, *, sender: str, replies_last_hour: int, max_per_hour: int
) -> Reply:
    """``due``, unless the sender cannot take replies or already had ``max_per_hour`` of them
    from this number in the last hour."""
    if due is None:
        return Reply(None)
    if not accepts_replies(sender):
        return Reply(None, Withheld.not_a_phone)
    if replies_last_hour >= max_per_hour:
        return Reply(None, Withheld.hourly_limit)
    return Reply(due)
