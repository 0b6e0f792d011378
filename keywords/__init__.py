"""SMS keywords (STOP, START, HELP and a number's own), recognised in an inbound message. Pure.

No I/O and no import of :mod:`gateway`: the gateway decides what a match does (opt out, reply),
this package only says what the message is. :func:`~keywords.normalise.normalise` gives the one
spelling a message and a keyword are compared under; :func:`~keywords.match.match` compares the
whole message with each keyword list in turn.
"""

from keywords.match import HELP, NO_MATCH, OPT_IN, OPT_OUT, Action, Match, built_in, match
from keywords.normalise import normalise

__all__ = [
    "HELP", "NO_MATCH", "OPT_IN", "OPT_OUT", "Action", "Match", "built_in", "match", "normalise",
]
