"""Choosing which of a template's locales a message is rendered in (pure).

A locale tag falls back by dropping its last subtag: ``zh-Hant-TW`` → ``zh-Hant`` → ``zh``, and
``pt-BR`` → ``pt``. The requested locale is tried first, then the user's; when neither matches,
the answer is ``None``: the template's top-level (default) parts. Matching ignores case and
reads ``_`` as ``-``, so ``PT_br`` finds a template's ``pt-BR``.
"""

from __future__ import annotations

import functools
from typing import Collection

__all__ = ["fallback_chain", "select_locale"]


# Pure, and asked for every message rendered from a template with locales, mostly for the same
# few dozen tags: memoised.
@functools.lru_cache(maxsize=1024)
def fallback_chain(tag: str) -> tuple[str, ...]:
    """``tag`` and each shorter tag it falls back to, in lower case: ``pt-br``, ``pt``."""
    subtags = [s for s in tag.replace("_", "-").lower().split("-") if s]
    return tuple("-".join(subtags[:end]) for end in range(len(subtags), 0, -1))


def select_locale(
    requested: str | None, user_locale: str | None, available: Collection[str]
) -> str | None:
    """The entry of ``available``, spelt as it is there, to render in; ``None`` for the default.

    ``available`` holds the locales that have the channel being rendered, so a locale without,
    say, an SMS body falls back for SMS only.
    """
    if not available:  # most templates: no locale of their own, nothing to choose
        return None
    by_key = {locale.replace("_", "-").lower(): locale for locale in available}
    for tag in (requested, user_locale):
        if not tag:
            continue
        for candidate in fallback_chain(tag):
            if candidate in by_key:
                return by_key[candidate]
    return None
