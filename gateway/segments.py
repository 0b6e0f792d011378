"""How many SMS segments a text takes, and in which encoding (pure; protocols.md §7).

A text made only of GSM 03.38 characters is sent in GSM-7: 160 septets fit one message, and a
longer one is split into segments of 153 (the other 7 carry the concatenation header). The
extension table's characters (form feed, ``^ { } \\ [ ~ ] |`` and ``€``) take two septets, an
escape and the character, and the pair is never split across two segments. One character
outside both tables switches the whole text to UCS-2: 70 UTF-16 code units in one message, 67 per
segment, and a character outside the Basic Multilingual Plane (most emoji) is a surrogate pair of
two units that is never split either.
"""

from __future__ import annotations

from typing import Iterable, Literal

__all__ = ["Encoding", "GSM7_BASIC", "GSM7_EXTENSION", "sms_segments", "septets", "utf16_units"]

Encoding = Literal["GSM-7", "UCS-2"]

# GSM 03.38 basic character set, row by row (0x1B, the escape to the extension table, left out).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
# GSM 03.38 extension table: each is sent as the escape followed by the character.
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

_GSM7_SINGLE, _GSM7_SEGMENT = 160, 153
_UCS2_SINGLE, _UCS2_SEGMENT = 70, 67


def septets(char: str) -> int | None:
    """The septets ``char`` takes in GSM-7 (1 or 2), or ``None`` if GSM-7 cannot carry it."""
    if char in GSM7_BASIC:
        return 1
    if char in GSM7_EXTENSION:
        return 2
    return None


def utf16_units(char: str) -> int:
    """The UTF-16 code units of one code point: 2 beyond the Basic Multilingual Plane."""
    return 2 if ord(char) > 0xFFFF else 1


def sms_segments(text: str) -> tuple[Encoding, int]:
    """The encoding ``text`` is sent in and how many segments it takes (0 for an empty text)."""
    if GSM7_BASIC.issuperset(text):
        # The usual text, every character one septet: no pair to keep whole, so the greedy
        # packing below comes to a plain division (asked once per SMS sent).
        size = len(text)
        if size > _GSM7_SINGLE:
            return "GSM-7", (size + _GSM7_SEGMENT - 1) // _GSM7_SEGMENT
        return "GSM-7", min(size, 1)
    gsm = [septets(char) for char in text]
    if all(cost is not None for cost in gsm):
        return "GSM-7", _count([c for c in gsm if c is not None], _GSM7_SINGLE, _GSM7_SEGMENT)
    return "UCS-2", _count([utf16_units(c) for c in text], _UCS2_SINGLE, _UCS2_SEGMENT)


def _count(costs: Iterable[int], single: int, per_segment: int) -> int:
    """Segments for characters of these sizes: one if the total fits ``single``; otherwise
    packed greedily into segments of ``per_segment``, a character never split between two."""
    sizes = list(costs)
    total = sum(sizes)
    if total == 0:
        return 0
    if total <= single:
        return 1
    segments, used = 1, 0
    for size in sizes:
        if used + size > per_segment:
            # The 2-septet pair (or surrogate pair) that would straddle the boundary moves
            # whole to the next segment, leaving one unit of this one unused.
            segments, used = segments + 1, 0
        used += size
    return segments
