"""SMS segment counting (pure): the fixture table of protocols.md §7, boundaries, properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.segments import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    _count,
    septets,
    sms_segments,
    utf16_units,
)

GSM_CHARS = sorted(GSM7_BASIC | GSM7_EXTENSION)
gsm_text = st.text(alphabet=st.sampled_from(GSM_CHARS), max_size=700)
any_text = st.text(max_size=500)
non_gsm_char = st.characters(codec="utf-8").filter(lambda c: septets(c) is None)


def total_septets(text: str) -> int:
    return sum(septets(c) or 0 for c in text)


def total_units(text: str) -> int:
    return sum(utf16_units(c) for c in text)


@pytest.mark.parametrize(
    ("text", "encoding", "segments"),
    [
        ("a" * 160, "GSM-7", 1),
        ("a" * 161, "GSM-7", 2),
        ("{" * 80, "GSM-7", 1),
        ("{" * 81, "GSM-7", 2),
        ("ж" * 70, "UCS-2", 1),
        ("ж" * 71, "UCS-2", 2),
    ],
)
def test_every_fixture_row_of_the_protocol_table(text: str, encoding: str, segments: int) -> None:
    """Each row of the §7 fixture table gives exactly its encoding and segment count."""
    assert sms_segments(text) == (encoding, segments)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ("GSM-7", 0)),
        ("a", ("GSM-7", 1)),
        ("a" * 306, ("GSM-7", 2)),
        ("a" * 307, ("GSM-7", 3)),
        ("a" * 159 + "€", ("GSM-7", 2)),
        ("a" * 158 + "€", ("GSM-7", 1)),
        ("\f^{}\\[~]|€", ("GSM-7", 1)),
        ("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ!¤§¿¡äöñüà", ("GSM-7", 1)),
        ("a" * 159 + "ж", ("UCS-2", 3)),
        ("ç", ("UCS-2", 1)),  # only the capital Ç is in the GSM-7 table
        ("😀" * 35, ("UCS-2", 1)),
        ("😀" * 36, ("UCS-2", 2)),
        ("ж" * 134, ("UCS-2", 2)),
        ("ж" * 135, ("UCS-2", 3)),
    ],
)
def test_boundaries(text: str, expected: tuple[str, int]) -> None:
    """Empty text, exact segment multiples, extension characters at the edge and emoji count as specified."""
    assert sms_segments(text) == expected


def test_an_escape_pair_straddling_the_153_boundary_moves_to_the_next_segment() -> None:
    """152 septets then `{`: the pair starts segment two, so 306 septets take 3 segments, not 2."""
    text = "a" * 152 + "{" + "a" * 152
    assert total_septets(text) == 306
    assert sms_segments(text) == ("GSM-7", 3)
    # Without the straddle the same septet count fits two segments.
    assert sms_segments("a" * 151 + "{" + "a" * 153) == ("GSM-7", 2)


def test_a_surrogate_pair_straddling_the_67_boundary_moves_to_the_next_segment() -> None:
    """66 units then an emoji: the pair starts segment two, so 134 units take 3 segments, not 2."""
    text = "ж" * 66 + "😀" + "ж" * 66
    assert total_units(text) == 134
    assert sms_segments(text) == ("UCS-2", 3)
    assert sms_segments("ж" * 65 + "😀" + "ж" * 67) == ("UCS-2", 2)


@given(gsm_text)
def test_gsm_text_of_at_most_160_septets_is_one_segment(text: str) -> None:
    """Any non-empty GSM-7 text of at most 160 septets is one GSM-7 segment."""
    encoding, segments = sms_segments(text)
    assert encoding == "GSM-7"
    if 0 < total_septets(text) <= 160:
        assert segments == 1


@given(gsm_text)
def test_gsm_segments_stay_within_the_septet_bounds(text: str) -> None:
    """Past 160 septets, GSM-7 needs between ceil(n/153) and ceil(n/152) segments (a pair wastes at most one septet)."""
    n = total_septets(text)
    _, segments = sms_segments(text)
    if n > 160:
        assert math.ceil(n / 153) <= segments <= math.ceil(n / 152)


@given(any_text, non_gsm_char, any_text)
def test_one_non_gsm_character_switches_the_whole_text_to_ucs2(
    before: str, char: str, after: str
) -> None:
    """A single character outside both GSM-7 tables makes the whole text UCS-2, within the unit bounds."""
    text = before + char + after
    encoding, segments = sms_segments(text)
    assert encoding == "UCS-2"
    n = total_units(text)
    if n <= 70:
        assert segments == 1
    else:
        assert math.ceil(n / 67) <= segments <= math.ceil(n / 66)


@given(any_text, st.integers(min_value=0, max_value=500))
def test_segments_never_decrease_as_text_grows(text: str, cut: int) -> None:
    """A prefix of a text never takes more segments than the whole text."""
    assert sms_segments(text[:cut])[1] <= sms_segments(text)[1]


@given(gsm_text, gsm_text)
def test_gsm_segments_never_decrease_as_gsm_text_grows(head: str, tail: str) -> None:
    """Appending GSM-7 text to GSM-7 text never lowers the segment count."""
    assert sms_segments(head)[1] <= sms_segments(head + tail)[1]


@given(st.text(alphabet=sorted(GSM7_BASIC), max_size=700))
def test_one_septet_text_counts_as_the_packing_counts_it(text: str) -> None:
    """The shortcut for text of one-septet characters agrees with the segment packing."""
    assert sms_segments(text) == ("GSM-7", _count([1] * len(text), 160, 153))
