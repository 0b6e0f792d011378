"""The sandbox templates render in: Jinja's immutable sandbox, with the cost of a render bounded.

A template is code from whoever holds a ``send`` or ``admin`` key, run synchronously in the
event loop, so the sandbox bounds what one render may cost, and refuses (``SecurityError``,
a permanent failure of the message) a template that asks for more:

- steps: every loop iteration (recursive loops included) and every call into template code
  (a macro, ``caller()``, a block, ``loop()``) counts; at most :data:`MAX_STEPS` per render,
  which bounds nested loops and macros that call themselves;
- time: at most :data:`MAX_RENDER_SECONDS` per render, checked at every step, for steps that
  are each expensive;
- size: the output of a render, and every buffer it builds (a macro's, a ``{% set %}`` block's),
  at most :data:`MAX_OUTPUT` characters, as is a value built with ``~`` or ``+``, or by a filter
  or a ``str`` method that repeats an argument (``join``, ``replace``, ``indent``...); one built
  with ``*``, padding or a format width at most :data:`MAX_PRODUCT` items, and a number built
  with ``*`` or ``**`` at most :data:`MAX_INT_BITS` bits.

A template render stays synchronous: the budget is carried by the render's own context, so
concurrent renders (one per message, in one event loop) never share one.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from copy import copy
from itertools import islice
from typing import Any, TypeVar

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.filters import FILTERS as _JINJA
from jinja2.nodes import EvalContext
from jinja2.runtime import BlockReference, Context, LoopContext, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = [
    "MAX_INT_BITS", "MAX_OUTPUT", "MAX_PRODUCT", "MAX_RENDER_SECONDS", "MAX_STEPS", "Sandbox",
    "too_long",
]

# A template may not build a value larger than this with * or ** ({{ 'a' * 10**9 }}).
MAX_PRODUCT = 100_000
# Bits of a number built with * or ** (Python will not print one over 4,300 digits anyway).
MAX_INT_BITS = 16_384
# Loop iterations and calls in one render: 1,000 rows of 100 is fine, 10,000 of 1,000 is not.
MAX_STEPS = 100_000
# Wall-clock time of one render, checked at each step: a legitimate one takes milliseconds.
MAX_RENDER_SECONDS = 1.0
# Characters in the output of one render, in any buffer it builds, and in a value built with
# ~ or +: far above any email (Gmail clips a message at 102 KB).
MAX_OUTPUT = 500_000

_T = TypeVar("_T")


class _RenderContext(Context):
    """The context of one render, carrying its budget. The class defaults stand until the first
    step, so a render that never loops or calls pays nothing for it."""

    steps: int = 0
    deadline: float = 0.0


def _step(context: _RenderContext) -> None:
    """Count one step of ``context``'s render; refuse one over the step or time budget."""
    steps = context.steps = context.steps + 1
    if steps == 1:
        context.deadline = time.monotonic() + MAX_RENDER_SECONDS
    elif steps > MAX_STEPS:
        raise jinja2.exceptions.SecurityError(
            f"a template may not take more than {MAX_STEPS} steps"
            " (loop iterations and macro calls)"
        )
    elif time.monotonic() > context.deadline:
        raise jinja2.exceptions.SecurityError(
            f"a template may not take more than {MAX_RENDER_SECONDS:g} s to render"
        )


def too_long() -> jinja2.exceptions.SecurityError:
    """The refusal of a render whose output is over :data:`MAX_OUTPUT` characters."""
    return jinja2.exceptions.SecurityError(
        f"a template may not render more than {MAX_OUTPUT} characters"
    )


def _sized(value: _T) -> _T:
    """``value``, refused when it is a string or sequence over :data:`MAX_OUTPUT` long."""
    if isinstance(value, (str, list, tuple)) and len(value) > MAX_OUTPUT:
        raise jinja2.exceptions.SecurityError(
            f"a template may not build a value over {MAX_OUTPUT} characters or items"
        )
    return value


# Jinja forbids new node types: a loop's iterable is marked by wrapping it in a filter whose
# name no template can write (a filter name is an identifier), compiled by the generator below.
_COUNTED = "counted loop iterable"


class _BudgetedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with loops counted and output bounded.

    Only loops and blocks (which may call themselves) repeat a template's top-level output:
    the render functions of a template with either are wrapped to refuse their output as it
    grows; the others render at Jinja's full speed, and their output is checked once, after
    (:meth:`Renderer.render_raw`). Buffers (a macro's, a ``{% set %}`` block's) are checked when
    joined, and by a loop that writes to one at each of its steps.
    """

    # Set by visit_For for a recursive loop, until its function's buffer is made.
    _recursive_loop = False

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        super().visit_Template(node, frame)
        if next(node.find_all((nodes.For, nodes.Block)), None) is not None:
            self.writeline("root = environment.bounded_output(root)")
            self.writeline("blocks = {k: environment.bounded_output(v) for k, v in blocks.items()}")

    def write_commons(self) -> None:
        super().write_commons()
        self.writeline("concat = environment.buffer_concat")

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        self._recursive_loop = node.recursive
        if node.recursive:
            # Its function counts the items it is given (see buffer): this call, and each of
            # the loop(children) in its body.
            super().visit_For(node, frame)
            return
        # A copy, so that only the code generated for this node changes, not Jinja's tree.
        counted = copy(node)
        counted.iter = nodes.Filter(node.iter, _COUNTED, [], [], None, None, lineno=node.lineno)
        super().visit_For(counted, frame)

    def buffer(self, frame: Frame) -> None:
        super().buffer(frame)
        if frame.loop_frame and self._recursive_loop:
            # The buffer of a recursive loop's function, made right after its ``def``.
            self._recursive_loop = False
            self.writeline(f"reciter = environment.bounded_iter(context, reciter, {frame.buffer})")

    def visit_Filter(self, node: nodes.Filter, frame: Frame) -> None:
        if node.name != _COUNTED or node.node is None:
            super().visit_Filter(node, frame)
            return
        # ``context`` is in scope wherever a loop is: the render function, a block's, or the
        # closure of a macro defined in either.
        self.write("environment.bounded_iter(context, ")
        self.visit(node.node, frame)
        self.write(f", {frame.buffer})")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.sized(")
        super().visit_Concat(node, frame)
        self.write(")")


class Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with the cost of one render bounded (see the module's
    docstring). :class:`gateway.render.Renderer` makes one for HTML parts and one for text."""

    code_generator_class = _BudgetedCodeGenerator
    context_class = _RenderContext
    intercepted_binops = frozenset({"*", "**", "%", "+"})
    sized = staticmethod(_sized)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        # The filters that build a value as large as an argument asks, bounded like * is.
        self.filters.update(
            batch=_batch, center=_center, format=_format, indent=_indent, join=_join,
            replace=_replace, slice=_slice, tojson=_tojson, wordwrap=_wordwrap,
        )

    @staticmethod
    def bounded_iter(
        context: _RenderContext, iterable: Iterable[_T], buffer: list[str] | None
    ) -> Iterator[_T]:
        """``iterable``, one step of ``context``'s render per item; refused once the loop has
        written over :data:`MAX_OUTPUT` characters to ``buffer``, when it writes to one
        (generated code calls it)."""
        step = _step
        if buffer is None:
            for item in iterable:
                step(context)
                yield item
            return
        seen = len(buffer)
        written = 0
        for item in iterable:
            step(context)
            if len(buffer) > seen:
                written += sum(map(len, buffer[seen:]))
                seen = len(buffer)
                if written > MAX_OUTPUT:
                    raise too_long()
            yield item

    @staticmethod
    def buffer_concat(parts: list[str]) -> str:
        """Join a buffer, refused over :data:`MAX_OUTPUT` characters (generated code calls it:
        a macro calling itself adds its output to its caller's, level after level)."""
        if sum(map(len, parts)) > MAX_OUTPUT:
            raise too_long()
        return "".join(parts)

    @staticmethod
    def bounded_output(
        render: Callable[[Context], Iterator[str]],
    ) -> Callable[[Context], Iterator[str]]:
        """``render`` (a template's or a block's render function), refused once its output is
        over :data:`MAX_OUTPUT` characters (generated code calls it)."""

        def bounded(context: Context) -> Iterator[str]:
            parts = iter(render(context))
            size = 0
            # Joined a batch at a time, in C: a loop's output may be thousands of parts.
            while batch := list(islice(parts, 64)):
                joined = "".join(batch)
                size += len(joined)
                if size > MAX_OUTPUT:
                    raise too_long()
                yield joined

        return bounded

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "+":
            # Doubling a string or a list, in a loop or {% set %} after {% set %}, would fill
            # the memory in some forty steps: bound the sum before building it.
            if _is_sequence(left) and _is_sequence(right) and len(left) + len(right) > MAX_OUTPUT:
                raise jinja2.exceptions.SecurityError(
                    f"a template may not build a value over {MAX_OUTPUT} characters or items"
                )
        elif operator == "**":
            if isinstance(right, (int, float)) and abs(right) > 64:
                raise jinja2.exceptions.SecurityError("exponent too large in a template")
            if isinstance(left, int) and isinstance(right, int) and (
                left.bit_length() * right > MAX_INT_BITS
            ):
                raise jinja2.exceptions.SecurityError("a template may not build so large a number")
        elif operator == "*" and isinstance(left, int) and isinstance(right, int):
            # Squaring a number in a loop doubles its digits: thirty steps take minutes.
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise jinja2.exceptions.SecurityError("a template may not build so large a number")
        elif _is_sequence(left) or _is_sequence(right):
            sequence, times = (left, right) if _is_sequence(left) else (right, left)
            if isinstance(times, int) and len(sequence) * times > MAX_PRODUCT:
                raise jinja2.exceptions.SecurityError(
                    f"a template may not build a value over {MAX_PRODUCT} items"
                )
        if operator == "%" and isinstance(left, str) and _is_wide(left):
            raise jinja2.exceptions.SecurityError("a format width too large in a template")
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Any:
        # str.format is wrapped when the attribute is read, not when it is called: check there.
        owner = getattr(value, "__self__", None)
        if isinstance(owner, str) and getattr(value, "__name__", "") in ("format", "format_map"):
            if _is_wide(owner):
                raise jinja2.exceptions.SecurityError("a format width too large in a template")
        return super().wrap_str_format(value)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        if type(__obj) in _TEMPLATE_CODE:
            # A call into template code is a step: a macro calling itself twice has no loop.
            _step(__context)
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(owner, str) and name in _STR_BUILDERS:
            args = _bounded_str_call(owner, name, args)
        elif name == "generate_lorem_ipsum" and args and isinstance(args[0], int) and args[0] > 100:
            raise jinja2.exceptions.SecurityError("lipsum() asked for too many paragraphs")
        return super().call(__context, __obj, *args, **kwargs)


# What a template may call that runs template code: macros and caller(), blocks, loop().
_TEMPLATE_CODE = frozenset({Macro, BlockReference, LoopContext})


def _bounded_str_call(owner: str, name: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``args`` for ``owner.name(*args)``, refused when the string it builds would be too large
    (padding like multiplying; replace, join and translate like their filters)."""
    if name in _PADDING:
        if args and isinstance(args[0], int) and args[0] > MAX_PRODUCT:
            raise jinja2.exceptions.SecurityError(f"{name}() width too large in a template")
    elif name == "replace" and len(args) >= 2:
        _refuse_over(_replaced_size(owner, *args), "replace")
    elif name == "join" and args:
        items = list(args[0])  # str.join makes a list of a generator first anyway
        _refuse_over(len(owner) * len(items), "join")
        args = (items, *args[1:])
    elif name == "translate" and args and isinstance(args[0], (dict, list, tuple)):
        table = args[0].values() if isinstance(args[0], dict) else args[0]
        widest = max((len(v) for v in table if isinstance(v, str)), default=1)
        _refuse_over(len(owner) * widest, "translate")
    return args


_PADDING = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})
# The str methods that may build a string much longer than the one they are called on.
_STR_BUILDERS = _PADDING | {"replace", "join", "translate"}
# A field width or precision of six digits or more in a %-format or str.format spec
# ('%1000000d', '%(n).999999f', '{:>999999}'), or one taken from the arguments ('%*d', '{:{}}').
_WIDE = re.compile(
    r"%(?:\([^)]*\))?[-+ #0]*(?:\*|\d{6,}|\d*\.(?:\*|\d{6,}))"
    r"|\{[^{}]*:[^{}]*(?:\d{6,}[^{}]*\}|\{)"
)


def _is_wide(spec: str) -> bool:
    # Four characters hold no six-digit width nor a nested field: '%s', '%.2f' skip the regex.
    return (len(spec) > 4 or "*" in spec) and _WIDE.search(spec) is not None


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (str, list, tuple, bytes))


# -- filters that build a value as large as an argument asks: each checks, then defers to Jinja's
# (taking the same first argument: see ``jinja_pass_arg`` on each in jinja2.filters.FILTERS).
# A filter called with arguments of the wrong type is left to fail in Jinja's own words.


def _refuse_over(size: Any, name: str, limit: int = MAX_OUTPUT) -> None:
    if isinstance(size, int) and size > limit:
        raise jinja2.exceptions.SecurityError(
            f"{name} may not build a value over {limit} characters or items"
        )


def _center(value: Any, width: int = 80) -> Any:
    _refuse_over(width, "center")
    return _JINJA["center"](value, width)


def _indent(s: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> Any:
    per_line = len(width) if isinstance(width, str) else width
    if isinstance(per_line, int):
        _refuse_over((str(s).count("\n") + 1) * per_line, "indent")
    return _JINJA["indent"](s, width, first, blank)


def _batch(value: Any, linecount: int, fill_with: Any = None) -> Any:
    _refuse_over(linecount, "batch", MAX_PRODUCT)
    return _JINJA["batch"](value, linecount, fill_with)


@jinja2.pass_eval_context
def _slice(eval_ctx: EvalContext, value: Any, slices: int, fill_with: Any = None) -> Any:
    _refuse_over(slices, "slice", MAX_PRODUCT)
    return _JINJA["slice"](eval_ctx, value, slices, fill_with)


@jinja2.pass_eval_context
def _join(eval_ctx: EvalContext, value: Iterable[Any], d: str = "", attribute: Any = None) -> Any:
    items = list(value)  # what Jinja's join does first anyway
    _refuse_over(len(items) * len(str(d)), "join")
    return _JINJA["join"](eval_ctx, items, d, attribute)


def _replaced_size(text: str, old: Any, new: Any, count: Any = -1) -> int:
    """About how many characters ``text.replace(old, new, count)`` adds."""
    old_text = str(old)
    times = len(text) + 1 if old_text == "" else text.count(old_text)
    if isinstance(count, int) and count >= 0:
        times = min(times, count)
    return times * len(str(new))


@jinja2.pass_eval_context
def _replace(eval_ctx: EvalContext, s: Any, old: Any, new: Any, count: Any = None) -> Any:
    _refuse_over(_replaced_size(str(s), old, new, count), "replace")
    return _JINJA["replace"](eval_ctx, s, old, new, count)


@jinja2.pass_environment
def _wordwrap(
    environment: jinja2.Environment,
    s: Any,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> Any:
    if isinstance(width, int):
        # Two consecutive lines hold more than ``width`` characters: at most 2n/width lines.
        breaks = 2 * len(str(s)) // max(width, 1) + 1
        separator = environment.newline_sequence if wrapstring is None else wrapstring
        _refuse_over(breaks * len(str(separator)), "wordwrap")
    return _JINJA["wordwrap"](environment, s, width, break_long_words, wrapstring,
                              break_on_hyphens)


def _format(value: Any, *args: Any, **kwargs: Any) -> Any:
    if isinstance(value, str) and _is_wide(value):
        raise jinja2.exceptions.SecurityError("a format width too large in a template")
    return _JINJA["format"](value, *args, **kwargs)


@jinja2.pass_eval_context
def _tojson(eval_ctx: EvalContext, value: Any, indent: int | str | None = None) -> Any:
    # Every line is indented by depth * indent: keep the indent to what people use.
    _refuse_over(len(indent) if isinstance(indent, str) else indent, "tojson indent", 16)
    return _JINJA["tojson"](eval_ctx, value, indent)
