"""The one spelling an inbound message and a keyword are compared under. Pure.

Carriers' and Twilio's rule is that the whole message must equal the keyword, case aside. People
type ``Stop.``, ``STOP!`` or `` stop `` and mean it; the FCC's "reasonable person" rule argues for
accepting those. So the message is read with its surroundings removed, and never more than that:
``stop please`` stays two words, and is not a keyword.
"""

from __future__ import annotations

import unicodedata

__all__ = ["normalise"]


def _is_surrounding(char: str) -> bool:
    """Whether ``char`` may be dropped from either end: punctuation, symbols, separators,
    control and format characters (an emoji, ``!``, a zero-width space), never a letter,
    digit or combining mark."""
    return unicodedata.category(char)[0] in "PSZC"


def normalise(text: str) -> str:
    """``'  Stop! '`` → ``'stop'``; ``'OPT   Out.'`` → ``'opt out'``.

    NFKC first, so a full-width ``ＳＴＯＰ`` or a ligature reads as plain letters; then case-fold,
    strip surrounding punctuation and whitespace, and collapse inner whitespace to one space.
    Inner punctuation stays (``opt-out`` is not ``opt out``).
    """
    # NFKC again after case-folding, which may undo a composition (Unicode's caseless match).
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    start, end = 0, len(folded)
    while start < end and _is_surrounding(folded[start]):
        start += 1
    while end > start and _is_surrounding(folded[end - 1]):
        end -= 1
    return " ".join(folded[start:end].split())
