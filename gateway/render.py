"""Jinja2 rendering in a sandbox: HTML parts autoescaped, every other part plain text.

Undefined variables are errors (``StrictUndefined``), so a typo fails the one message with a
reason naming the variable instead of sending "Hello ,". Compiled templates are cached by
source, and text without any Jinja syntax skips Jinja altogether.
"""

from __future__ import annotations

import html
import re
from collections import OrderedDict
from typing import Any, Mapping

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gateway.errors import MessageFailed

_SYNTAX = ("{{", "{%", "{#")
# A template may not build a value larger than this with * or ** ({{ 'a' * 10**9 }}).
MAX_PRODUCT = 100_000


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with the multiplications that can exhaust memory bounded."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, (int, float)) and abs(right) > 64:
                raise jinja2.exceptions.SecurityError("exponent too large in a template")
        elif _is_sequence(left) or _is_sequence(right):
            sequence, times = (left, right) if _is_sequence(left) else (right, left)
            if isinstance(times, int) and len(sequence) * times > MAX_PRODUCT:
                raise jinja2.exceptions.SecurityError(
                    f"a template may not build a value over {MAX_PRODUCT} items"
                )
        if operator == "%" and isinstance(left, str) and _WIDE.search(left):
            raise jinja2.exceptions.SecurityError("a format width too large in a template")
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Any:
        # str.format is wrapped when the attribute is read, not when it is called: check there.
        owner = getattr(value, "__self__", None)
        if isinstance(owner, str) and getattr(value, "__name__", "") in ("format", "format_map"):
            if _WIDE.search(owner):
                raise jinja2.exceptions.SecurityError("a format width too large in a template")
        return super().wrap_str_format(value)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        # Padding and formatting build strings as wide as asked: bound the width the same way.
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(owner, str):
            if name in _PADDING and args and isinstance(args[0], int) and args[0] > MAX_PRODUCT:
                raise jinja2.exceptions.SecurityError(f"{name}() width too large in a template")
        elif name == "generate_lorem_ipsum" and args and isinstance(args[0], int) and args[0] > 100:
            raise jinja2.exceptions.SecurityError("lipsum() asked for too many paragraphs")
        return super().call(__context, __obj, *args, **kwargs)


_PADDING = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})
# A field width of six digits or more in a %-format or str.format spec ('%1000000d', '{:>999999}').
_WIDE = re.compile(r"%[-+ #0]*\d{6,}|\{[^{}]*:[^{}]*\d{6,}[^{}]*\}")


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (str, list, tuple, bytes))


class Renderer:
    """Renders template strings; one instance per process, built by the entry point."""

    def __init__(self, *, cache_size: int = 2048) -> None:
        common: dict[str, Any] = {"undefined": jinja2.StrictUndefined, "keep_trailing_newline": True}
        self._html = _Sandbox(autoescape=True, **common)
        self._text = _Sandbox(autoescape=False, **common)
        self._cache: OrderedDict[tuple[bool, str], jinja2.Template] = OrderedDict()
        self._cache_size = cache_size

    def render(self, source: str, data: Mapping[str, Any], *, part: str, is_html: bool) -> str:
        """Render ``source`` with ``data``; raise :class:`MessageFailed` naming ``part`` on error."""
        try:
            return self.render_raw(source, data, is_html=is_html)
        except jinja2.TemplateSyntaxError as exc:
            raise MessageFailed(f"template syntax error in {part} line {exc.lineno}: {exc.message}")
        except jinja2.UndefinedError as exc:
            raise MessageFailed(f"template error in {part}: {exc.message}")
        except jinja2.exceptions.SecurityError as exc:
            raise MessageFailed(f"template refused in {part}: {exc}")
        except Exception as exc:  # any error raised by template code fails this message only
            raise MessageFailed(f"template error in {part}: {type(exc).__name__}: {exc}")

    def render_raw(self, source: str, data: Mapping[str, Any], *, is_html: bool) -> str:
        """Render ``source`` with ``data``, letting Jinja's errors through to a caller that words
        its own reason (see :func:`describe_error`)."""
        if not any(marker in source for marker in _SYNTAX):
            return source
        return self._compiled(source, is_html).render(data)

    def compile(self, source: str, *, is_html: bool) -> None:
        """Compile ``source`` in the environment it will render in (and cache it); raise
        ``jinja2.TemplateSyntaxError`` if it is not a valid template."""
        self._compiled(source, is_html)

    def _compiled(self, source: str, is_html: bool) -> jinja2.Template:
        key = (is_html, source)
        template = self._cache.get(key)
        if template is None:
            env = self._html if is_html else self._text
            template = env.from_string(source)
            self._cache[key] = template
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return template


def describe_error(exc: Exception) -> str:
    """One line for an error raised by :meth:`Renderer.render_raw` or :meth:`Renderer.compile`:
    ``line 3: unexpected '}'``, ``'first_name' is undefined``, ``refused: ...``."""
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return f"line {exc.lineno}: {exc.message}"
    if isinstance(exc, jinja2.exceptions.SecurityError):
        return f"refused: {exc}"
    if isinstance(exc, jinja2.UndefinedError):
        return str(exc.message)
    return f"{type(exc).__name__}: {exc}"


# A run of block tags, opening or closing, is one line break ("a<ul><li>b" is not "ab"); a
# table cell ends with a space ("<td>Name</td><td>Jane</td>" is not "NameJane").
_BLOCK = re.compile(
    r"(?:</?(?:p|div|h[1-6]|li|tr|table|ul|ol)\b[^>]*>)+|<br\s*/?>", re.IGNORECASE
)
_CELL_END = re.compile(r"</t[dh]\s*>", re.IGNORECASE)
_DROP = re.compile(r"<(script|style|head)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]+>")
_LINK = re.compile(r"""<a\s[^>]*href=["']([^"']+)["'][^>]*>(.*?)</a\s*>""", re.IGNORECASE | re.DOTALL)


def html_to_text(markup: str) -> str:
    """A readable plain-text alternative of an HTML body (links kept as ``text (url)``)."""
    text = _DROP.sub("", markup)
    text = _LINK.sub(lambda m: f"{m.group(2)} ({m.group(1)})", text)
    text = _CELL_END.sub(" ", _BLOCK.sub("\n", text))
    text = html.unescape(_TAG.sub("", text))
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"
