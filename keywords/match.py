"""Which keyword an inbound message is, if any. Pure.

The whole normalised message is compared, in this order, with the opt-out list, the opt-in list,
the help list and then the number's custom keywords; the first hit wins, so a custom keyword can
never shadow ``STOP``. Nothing matches a keyword followed by more words (``STOP please``,
``stop 12345``) or preceded by one (``don't stop``): such messages are ordinary messages.

The lists join Twilio's defaults, the words of the FCC rule (47 CFR 64.1200(a)(10)) and AWS End
User Messaging's opt-out words, with Telnyx's ``STOP ALL``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from keywords.normalise import normalise

__all__ = ["HELP", "NO_MATCH", "OPT_IN", "OPT_OUT", "Action", "Match", "built_in", "match"]

OPT_OUT: tuple[str, ...] = (
    "STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT", "OPT OUT",
    "OPT-OUT", "STOP ALL", "ARRET", "REMOVE", "TD",
)
OPT_IN: tuple[str, ...] = ("START", "YES", "UNSTOP")
HELP: tuple[str, ...] = ("HELP", "INFO")


class Action(str, Enum):
    """What a message asks for."""

    opt_out = "opt_out"
    opt_in = "opt_in"
    help = "help"
    custom = "custom"  # one of the number's own keywords: its reply is the answer
    none = "none"  # an ordinary message


@dataclass(frozen=True, slots=True)
class Match:
    """The action, the keyword as listed (``STOP``, or the custom key as configured) and, for a
    custom keyword, its reply. ``keyword`` and ``reply`` are ``None`` when nothing matched."""

    action: Action
    keyword: str | None = None
    reply: str | None = None


NO_MATCH = Match(Action.none)

# Normalised spelling -> keyword as listed, built once: the lists are constants.
_BUILT_IN: tuple[tuple[Action, dict[str, str]], ...] = tuple(
    (action, {normalise(word): word for word in words})
    for action, words in ((Action.opt_out, OPT_OUT), (Action.opt_in, OPT_IN), (Action.help, HELP))
)


def built_in(keyword: str) -> Action | None:
    """The action of the built-in keyword ``keyword`` spells (in any case, with any surrounding
    punctuation), or ``None``."""
    key = normalise(keyword)
    return next((action for action, words in _BUILT_IN if key in words), None)


def match(text: str, custom: Mapping[str, str]) -> Match:
    """Match the whole of ``text`` against the built-in lists, then ``custom`` (keyword -> reply).

    Custom keywords are normalised like the message, so ``{"Hours": ...}`` matches ``HOURS!``.
    """
    key = normalise(text)
    if not key:
        return NO_MATCH
    for action, words in _BUILT_IN:
        if key in words:
            return Match(action, words[key])
    for keyword, reply in custom.items():
        if normalise(keyword) == key:
            return Match(Action.custom, keyword, reply)
    return NO_MATCH
