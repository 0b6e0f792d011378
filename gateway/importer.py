"""Bulk import of users from CSV or JSON lines, for ``gateway import-users`` and
``POST /v1/users:import``.

Every row is validated with the same :class:`~gateway.recipients.User` model as
``PUT /v1/users/{id}``. A bad row is rejected with its line number and reason and never stops
the rest; good rows are written 1,000 at a time, one statement per batch. A problem with the
file as a whole (unreadable, unknown format, bad CSV header) raises :class:`ImportFailed`
before anything is written.

CSV: a header row naming the columns ``id`` (required), ``timezone``, ``locale``, ``email``,
``sms``, ``push_token``, ``push_platform`` and ``attr.<name>``. A cell may hold several
addresses separated by ``;``; ``push_platform`` holds one platform for all the row's tokens or
one per token. An empty cell is a missing value. Attribute values are strings.

JSON lines: one user object per line, as the body of ``PUT /v1/users/{id}`` plus ``"id"``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import IO, Any, Literal

import orjson
from pydantic import ValidationError

from gateway.recipients import Recipients, User

__all__ = [
    "BATCH_SIZE",
    "ImportFailed",
    "ImportSummary",
    "Row",
    "detect_format",
    "import_users",
    "read_rows",
    "read_upload",
]

BATCH_SIZE = 1000
MAX_REJECTIONS_LISTED = 1000

Format = Literal["csv", "jsonl"]
_EXTENSIONS: dict[str, Format] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_CSV_COLUMNS = ("id", "timezone", "locale", "email", "sms", "push_token", "push_platform")
_ADDRESS_COLUMNS = (("email", "email"), ("sms", "sms"), ("push", "push_token"))
_BOM = b"\xef\xbb\xbf"
# What surrogateescape decoding leaves for bytes that are not UTF-8.
_UNDECODABLE = re.compile("[\udc80-\udcff]")


class ImportFailed(Exception):
    """Raised when the file as a whole cannot be imported; nothing has been written."""


@dataclass(frozen=True, slots=True)
class Row:
    """One record of the file: its first line number and the user, or why it was rejected."""

    line: int
    user: User | None = None
    reason: str | None = None


@dataclass
class ImportSummary:
    """What an import did. ``rejected`` lists the first 1,000 rejections, ``rejected_count``
    counts them all."""

    imported: int = 0
    updated: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    rejected_count: int = 0

    def reject(self, line: int, reason: str) -> None:
        """Count a rejected row, and list it while the list is short enough."""
        self.rejected_count += 1
        if len(self.rejected) < MAX_REJECTIONS_LISTED:
            self.rejected.append({"line": line, "reason": reason})

    def to_json(self) -> dict[str, Any]:
        """The summary as printed by the CLI and answered by the API."""
        return {
            "imported": self.imported,
            "updated": self.updated,
            "rejected": self.rejected,
            "rejected_count": self.rejected_count,
        }


async def import_users(
    rows: Iterable[Row],
    *,
    recipients: Recipients,
    batch_size: int = BATCH_SIZE,
    on_progress: Callable[[int], None] | None = None,
) -> ImportSummary:
    """Write the good rows in batches of ``batch_size``; ``on_progress(rows_read)`` after each."""
    summary = ImportSummary()
    batch: list[User] = []
    read = 0

    async def flush() -> None:
        inserted, updated = await recipients.upsert(batch)
        summary.imported += inserted
        summary.updated += updated
        batch.clear()
        if on_progress is not None:
            on_progress(read)

    for row in rows:
        read += 1
        if row.user is None:
            summary.reject(row.line, row.reason or "rejected")
        else:
            batch.append(row.user)
        if len(batch) >= batch_size:
            await flush()
    await flush()
    return summary


def detect_format(name: str | None, first_bytes: bytes) -> Format:
    """``csv`` or ``jsonl``: by the file's extension when it has a known one, else by the first
    non-blank character (``{`` is JSON lines; anything else is a CSV header)."""
    if name is not None:
        known = _EXTENSIONS.get(PurePath(name).suffix.lower())
        if known is not None:
            return known
    return "jsonl" if first_bytes.removeprefix(_BOM).lstrip().startswith(b"{") else "csv"


def read_upload(stream: IO[bytes]) -> Iterator[Row]:
    """The rows of a seekable upload whose format is told by its first non-blank character."""
    start = stream.tell()
    head = stream.read(4096)
    stream.seek(start)
    return read_rows(stream, detect_format(None, head))


def read_rows(stream: IO[bytes], fmt: Format) -> Iterator[Row]:
    """The rows of a binary stream. A CSV header is read and checked now, so a file that
    cannot be imported raises :class:`ImportFailed` before anything is written."""
    if fmt == "jsonl":
        return _jsonl_rows(stream)
    # newline="" as the csv module requires; surrogateescape so that one row that is not UTF-8
    # is rejected on its own instead of ending the file.
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(text, strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise ImportFailed(f"line 1: unreadable CSV header: {exc}") from None
    if header is None:
        raise ImportFailed("the file is empty")
    return _csv_rows(reader, _CsvLayout.parse(header))


# -- JSON lines --------------------------------------------------------------------------------


def _jsonl_rows(stream: IO[bytes]) -> Iterator[Row]:
    for number, line in enumerate(stream, start=1):
        if number == 1:
            line = line.removeprefix(_BOM)
        if not line.strip():
            continue
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield Row(number, reason=f"invalid JSON: {exc}")
            continue
        if not isinstance(data, dict):
            yield Row(number, reason=f"a user object expected, got {type(data).__name__}")
            continue
        try:
            yield Row(number, user=User.model_validate(data))
        except ValidationError as exc:
            yield Row(number, reason=_describe(exc, lambda loc: loc))


# -- CSV ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CsvLayout:
    """Where each known column sits in the header, and the ``attr.*`` columns."""

    width: int
    index: dict[str, int]
    attributes: list[tuple[str, int]]

    @classmethod
    def parse(cls, header: list[str]) -> _CsvLayout:
        index: dict[str, int] = {}
        attributes: list[tuple[str, int]] = []
        for position, raw in enumerate(header):
            name = raw.strip()
            if name in index or name in (f"attr.{a}" for a, _ in attributes):
                raise ImportFailed(f"line 1: column {name!r} appears twice in the header")
            if name.startswith("attr.") and len(name) > len("attr."):
                attributes.append((name.removeprefix("attr."), position))
            elif name in _CSV_COLUMNS:
                index[name] = position
            else:
                raise ImportFailed(
                    f"line 1: unknown column {name!r}; known: {', '.join(_CSV_COLUMNS)}"
                    " and attr.<name>"
                )
        if "id" not in index:
            raise ImportFailed("line 1: the header has no 'id' column")
        return cls(len(header), index, attributes)


def _csv_rows(reader: Any, layout: _CsvLayout) -> Iterator[Row]:
    last_line = reader.line_num
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            # The reader drops the rest of the bad line; the next record starts on the next.
            yield Row(last_line + 1, reason=f"unreadable CSV: {exc}")
            last_line = reader.line_num
            continue
        line, last_line = last_line + 1, reader.line_num
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue  # a blank line
        yield _csv_row(line, cells, layout)


def _csv_row(line: int, cells: list[str], layout: _CsvLayout) -> Row:
    if len(cells) != layout.width:
        return Row(
            line, reason=f"expected {layout.width} fields as in the header, got {len(cells)}"
        )
    if any(_UNDECODABLE.search(cell) for cell in cells):
        return Row(line, reason="not valid UTF-8")

    def cell(name: str) -> str:
        position = layout.index.get(name)
        return "" if position is None else cells[position].strip()

    endpoints: list[dict[str, Any]] = []
    columns: list[str] = []  # the CSV column of each endpoint, to name it in errors
    for channel, column in _ADDRESS_COLUMNS:
        for address in _split(cell(column)):
            endpoints.append({"channel": channel, "address": address})
            columns.append(column)
    platforms = _split(cell("push_platform"))
    tokens = [e for e in endpoints if e["channel"] == "push"]
    if platforms and len(platforms) not in (1, len(tokens)):
        return Row(line, reason="push_platform: give one platform, or one per push_token")
    for position, endpoint in enumerate(tokens):
        if platforms:
            endpoint["platform"] = platforms[0 if len(platforms) == 1 else position]
    data = {
        "id": cell("id"),
        "timezone": cell("timezone") or None,
        "locale": cell("locale") or None,
        "attributes": {name: cells[i] for name, i in layout.attributes if cells[i] != ""},
        "endpoints": endpoints,
    }
    try:
        return Row(line, user=User.model_validate(data))
    except ValidationError as exc:
        return Row(line, reason=_describe(exc, lambda loc: _csv_field(loc, columns)))


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(";") if part.strip()]


def _csv_field(loc: tuple[int | str, ...], columns: list[str]) -> tuple[int | str, ...]:
    """A model location as the CSV column it came from: ``endpoints.2.address`` → ``sms``."""
    if loc[:1] == ("endpoints",) and len(loc) > 1 and isinstance(loc[1], int):
        if loc[2:3] == ("platform",):
            return ("push_platform",)
        return (columns[loc[1]],)
    if loc[:1] == ("attributes",) and len(loc) > 1:
        return (f"attr.{loc[1]}",)
    return loc


def _describe(
    exc: ValidationError, where: Callable[[tuple[int | str, ...]], tuple[int | str, ...]]
) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        path = ".".join(str(p) for p in where(tuple(error["loc"])))
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{path}: {message}" if path else message)
    return "; ".join(parts)[:1000]
