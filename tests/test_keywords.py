"""Keyword normalisation and matching, and the auto-reply decision: pure, with properties."""

from __future__ import annotations

import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from gateway.autoreply import Reply, Withheld, accepts_replies, decide_reply, due_reply
from gateway.numbers import NumberConfig
from keywords import HELP, NO_MATCH, OPT_IN, OPT_OUT, Action, Match, match, normalise

BUILT_IN = {normalise(k) for k in (*OPT_OUT, *OPT_IN, *HELP)}
# What people put around a keyword: punctuation and whitespace of every kind.
SURROUNDINGS = st.text(alphabet=string.punctuation + " \t\r\n\u00a0\u3000¡¿…«»", max_size=6)
WORDS = st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=10)


@st.composite
def any_casing(draw: st.DrawFn, word: str) -> str:
    """``word`` with each letter's case drawn independently."""
    flips = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    return "".join(c.swapcase() if flip else c for c, flip in zip(word, flips))


# -- normalise ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("  Stop! ", "stop"),
        ("OPT   Out.", "opt out"),
        ("Opt-Out", "opt-out"),
        ("\u00a0¡¡HELP!!\n", "help"),
        ("ＳＴＯＰ", "stop"),  # full-width letters read as plain ones
        ("stop 🙏", "stop"),
        ("don't  stop", "don't stop"),
        ("...", ""),
        ("", ""),
    ],
)
def test_normalise_examples(text: str, normal: str) -> None:
    """normalise trims, case-folds, strips surrounding punctuation and collapses inner spaces."""
    assert normalise(text) == normal


@given(st.text())
def test_normalise_is_idempotent(text: str) -> None:
    """Normalising twice changes nothing more than normalising once."""
    once = normalise(text)
    assert normalise(once) == once


@given(st.text())
def test_normalised_text_has_no_surrounding_punctuation_or_double_spaces(text: str) -> None:
    """A normalised text has no surrounding whitespace or punctuation, nor two spaces in a row."""
    normal = normalise(text)
    assert normal == normal.strip()
    assert "  " not in normal
    if normal:
        assert normal[0] not in string.punctuation and normal[-1] not in string.punctuation


# -- match -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "action", "keyword"),
    [
        ("Stop.", Action.opt_out, "STOP"),
        (" stop ", Action.opt_out, "STOP"),
        ("STOP!", Action.opt_out, "STOP"),
        ("sToP", Action.opt_out, "STOP"),
        ("stop all", Action.opt_out, "STOP ALL"),
        ("Opt out", Action.opt_out, "OPT OUT"),
        ("opt-out", Action.opt_out, "OPT-OUT"),
        ("arret", Action.opt_out, "ARRET"),
        ("td", Action.opt_out, "TD"),
        ("Unsubscribe", Action.opt_out, "UNSUBSCRIBE"),
        ("start", Action.opt_in, "START"),
        ("Yes!", Action.opt_in, "YES"),
        ("unstop", Action.opt_in, "UNSTOP"),
        ("help?", Action.help, "HELP"),
        ("Info", Action.help, "INFO"),
        ("STOP please", Action.none, None),
        ("stop 12345", Action.none, None),
        ("don't stop", Action.none, None),
        ("stopp", Action.none, None),
        ("", Action.none, None),
    ],
)
def test_keyword_table(text: str, action: Action, keyword: str | None) -> None:
    """Each message of the table matches the listed action and keyword, or nothing."""
    found = match(text, {})
    assert (found.action, found.keyword) == (action, keyword)


def test_custom_keyword_matches_like_a_built_in_one() -> None:
    """A custom keyword matches whatever the case and surrounding punctuation, with its reply."""
    assert match("hours?", {"HOURS": "We are open 9-5"}) == Match(
        Action.custom, "HOURS", "We are open 9-5"
    )
    assert match("  Opening Hours!", {"opening  hours": "9-5"}).reply == "9-5"
    assert match("hours please", {"HOURS": "9-5"}) == NO_MATCH


def test_built_in_keywords_win_over_custom_ones() -> None:
    """A custom keyword spelt like STOP never shadows the opt-out."""
    assert match("stop", {"STOP": "no"}).action is Action.opt_out


@given(st.sampled_from(OPT_OUT).flatmap(lambda k: st.tuples(st.just(k), any_casing(k))),
       SURROUNDINGS, SURROUNDINGS)
def test_any_casing_and_surroundings_of_an_opt_out_keyword_opt_out(
    keyword_and_text: tuple[str, str], before: str, after: str
) -> None:
    """An opt-out keyword in any case, with any punctuation or whitespace around it, opts out."""
    keyword, text = keyword_and_text
    assert match(before + text + after, {}) == Match(Action.opt_out, keyword)


@given(st.sampled_from((*OPT_OUT, *OPT_IN, *HELP)), WORDS)
def test_a_keyword_followed_by_a_word_is_an_ordinary_message(keyword: str, word: str) -> None:
    """A keyword followed by a space and a word matches nothing (unless the phrase is listed)."""
    # "STOP" + " ALL" is itself the keyword STOP ALL: the only such phrase in the lists.
    assume(normalise(f"{keyword} {word}") not in BUILT_IN)
    assert match(f"{keyword} {word}", {}) == NO_MATCH


@given(WORDS, st.sampled_from(OPT_OUT))
def test_a_word_before_a_keyword_is_an_ordinary_message(word: str, keyword: str) -> None:
    """A word before a keyword ("don't stop") makes it an ordinary message."""
    assume(normalise(f"{word} {keyword}") not in BUILT_IN)
    assert match(f"{word} {keyword}", {}).action is Action.none


@given(st.text(alphabet=string.ascii_letters, min_size=1, max_size=20), SURROUNDINGS,
       SURROUNDINGS, st.text(min_size=1))
def test_custom_keywords_match_through_surroundings(
    keyword: str, before: str, after: str, reply: str
) -> None:
    """A custom keyword, not a built-in one, matches with any surroundings and gives its reply."""
    assume(normalise(keyword) not in BUILT_IN)
    assert match(before + keyword.swapcase() + after, {keyword: reply}) == Match(
        Action.custom, keyword, reply
    )


# -- auto-replies ------------------------------------------------------------------------------

CONFIG = NumberConfig(keywords={"HOURS": "9-5"})


@pytest.mark.parametrize(
    ("found", "newly", "reply"),
    [
        (Match(Action.opt_out, "STOP"), True, CONFIG.stop_text),
        (Match(Action.opt_out, "STOP"), False, None),  # one confirmation, never two
        (Match(Action.opt_in, "START"), False, CONFIG.start_text),
        (Match(Action.help, "HELP"), False, CONFIG.help_text),
        (Match(Action.custom, "HOURS", "9-5"), False, "9-5"),
        (NO_MATCH, False, None),
    ],
)
def test_due_reply_follows_the_keyword(found: Match, newly: bool, reply: str | None) -> None:
    """Stop text only when newly opted out; start, help or custom text; nothing otherwise."""
    assert due_reply(found, CONFIG, newly_opted_out=newly) == reply


@pytest.mark.parametrize(
    ("sender", "accepted"),
    [
        ("+14155550100", True),
        ("+447911123456", True),
        ("+123456789", True),  # 9 digits
        ("+12345678", False),  # 8 digits: a short code
        ("12345", False),
        ("ACME", False),
        ("+1415555010a", False),
        ("14155550100", False),  # not E.164 without the +
    ],
)
def test_who_accepts_replies(sender: str, accepted: bool) -> None:
    """Only E.164 numbers of more than 8 digits get auto-replies."""
    assert accepts_replies(sender) is accepted


@given(st.text(alphabet=string.digits, max_size=8))
def test_short_codes_never_accept_replies(digits: str) -> None:
    """Up to 8 digits, with or without +, is never a number we answer."""
    assert not accepts_replies(digits)
    assert not accepts_replies("+" + digits)


@given(st.text(min_size=1).filter(lambda s: any(c.isalpha() for c in s)))
def test_alphanumeric_senders_never_accept_replies(sender: str) -> None:
    """A sender id with a letter in it is never answered."""
    assert not accepts_replies(sender)


@given(st.integers(min_value=0, max_value=50), st.integers(min_value=0, max_value=50))
def test_the_hourly_limit_is_never_exceeded(replies: int, limit: int) -> None:
    """A due reply is given only while fewer than the limit were given in the last hour."""
    decided = decide_reply("hi", sender="+14155550100", replies_last_hour=replies,
                           max_per_hour=limit)
    if replies < limit:
        assert decided == Reply("hi")
    else:
        assert decided == Reply(None, Withheld.hourly_limit)


def test_no_due_reply_is_never_withheld() -> None:
    """Without a due reply there is nothing to withhold, whoever the sender."""
    assert decide_reply(None, sender="ACME", replies_last_hour=9, max_per_hour=3) == Reply(None)
    assert decide_reply("hi", sender="ACME", replies_last_hour=0, max_per_hour=3) == Reply(
        None, Withheld.not_a_phone
    )
