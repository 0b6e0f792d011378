"""A one-line text progress bar for long commands on a terminal (no dependency)."""

from __future__ import annotations

from typing import TextIO

__all__ = ["ProgressBar"]


class ProgressBar:
    """``[#########...........]  45%  12,000 rows``, redrawn in place on ``stream``.

    Redrawn only when the shown percentage changes, so a fast loop does not flood a slow
    terminal. Call :meth:`finish` to end the line.
    """

    def __init__(self, stream: TextIO, *, total: int, unit: str, width: int = 30) -> None:
        self._stream = stream
        self._total = max(total, 1)
        self._unit = unit
        self._width = width
        self._shown: int | None = None

    def update(self, done: int, count: int) -> None:
        """Show ``done`` of ``total`` (e.g. bytes read) and ``count`` things handled so far."""
        percent = min(100, done * 100 // self._total)
        if percent == self._shown:
            return
        self._shown = percent
        filled = self._width * percent // 100
        bar = "#" * filled + "." * (self._width - filled)
        self._stream.write(f"\r[{bar}] {percent:3d}%  {count:,} {self._unit}")
        self._stream.flush()

    def finish(self) -> None:
        """End the bar's line."""
        self._stream.write("\n")
        self._stream.flush()
