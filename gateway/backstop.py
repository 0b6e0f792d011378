"""A long, coarse time limit for many awaits at once, kept by one timer.

Every send is cut off at half the processing lease (150 s by default), so that a batch finishes
inside its lease whatever a provider does. ``asyncio.timeout()`` gave each send a timer of its
own: on uvloop that is a libuv handle made, started, stopped and closed per send, 7.4 µs of CPU,
for a limit that is almost never reached and needs no precision. :class:`Backstop` keeps the
deadlines of the awaits it guards and checks them with one timer, every ``resolution`` seconds,
which runs only while something is guarded.

The semantics are ``asyncio.timeout()``'s, to within ``resolution``: when the deadline passes,
the guarded task is cancelled, and leaving the block turns that cancellation into
``TimeoutError``; a cancellation from elsewhere stays a ``CancelledError``.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

__all__ = ["Backstop"]


class Backstop:
    """Guards awaits with a limit of ``seconds``; ``async with backstop():`` per await."""

    def __init__(self, seconds: float, *, resolution: float | None = None) -> None:
        """``resolution``: how often deadlines are checked; by default a tenth of ``seconds``,
        at most one second."""
        if seconds <= 0:
            raise ValueError("seconds must be positive")
        self.seconds = seconds
        self.resolution = resolution if resolution is not None else min(1.0, seconds / 10)
        self._guards: set[_Guard] = set()
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self) -> _Guard:
        return _Guard(self)

    def _add(self, guard: _Guard, loop: asyncio.AbstractEventLoop) -> None:
        self._guards.add(guard)
        if self._timer is None:
            self._timer = loop.call_later(self.resolution, self._check, loop)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        for guard in [g for g in self._guards if g.deadline <= now and not g.expired]:
            guard.expired = True
            guard.task.cancel()
        if self._guards:
            self._timer = loop.call_later(self.resolution, self._check, loop)


class _Guard:
    __slots__ = ("_backstop", "task", "deadline", "expired", "_cancelling")

    def __init__(self, backstop: Backstop) -> None:
        self._backstop = backstop
        self.expired = False

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Backstop must be used inside a task")
        loop = asyncio.get_running_loop()
        self.task = task
        self._cancelling = task.cancelling()
        self.deadline = loop.time() + self._backstop.seconds
        self._backstop._add(self, loop)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._backstop._guards.discard(self)
        # As asyncio.Timeout does: our cancellation becomes TimeoutError unless the task was
        # also cancelled from elsewhere meanwhile.
        if self.expired and self.task.uncancel() <= self._cancelling \
                and exc_type is asyncio.CancelledError:
            raise TimeoutError(f"cut off after {self._backstop.seconds:g} s") from exc
