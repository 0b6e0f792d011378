"""Jinja2 rendering in a sandbox: HTML parts autoescaped, every other part plain text.

Undefined variables are errors (``StrictUndefined``), so a typo fails the one message with a
reason naming the variable instead of sending "Hello ,". Compiled templates are cached by
source, and text without any Jinja syntax skips Jinja altogether.

What a render may cost is bounded by the sandbox (:mod:`gateway.sandbox`): a template that asks
for more fails its message with a reason (``template refused in ...``).
"""

from __future__ import annotations

import html
import re
from collections import OrderedDict
from typing import Any, Mapping

import jinja2

from gateway.errors import MessageFailed
from gateway.sandbox import MAX_OUTPUT, Sandbox, too_long

_SYNTAX = ("{{", "{%", "{#")


class Renderer:
    """Renders template strings; one instance per process, built by the entry point."""

    def __init__(self, *, cache_size: int = 2048) -> None:
        common: dict[str, Any] = {"undefined": jinja2.StrictUndefined, "keep_trailing_newline": True}
        self._html = Sandbox(autoescape=True, **common)
        self._text = Sandbox(autoescape=False, **common)
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
        rendered = self._compiled(source, is_html).render(data)
        if len(rendered) > MAX_OUTPUT:
            # A template without loops or blocks: its output was not bounded as it rendered.
            raise too_long()
        return rendered

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
            # Its globals are a ChainMap over the environment's, which every render iterates
            # twice (to build the context): half of a short render's time. Ours never change
            # after the environment is built, so a plain copy reads the same, in half the time.
            template.globals = dict(template.globals)
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
