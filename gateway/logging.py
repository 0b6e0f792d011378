"""structlog, configured once by the entry point: JSON off a terminal, masking of personal data.

Every string value in every event passes :func:`mask_personal_data`, so an email address or a
phone number that slips into a log call (an error message from a provider, say) is masked too.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any, MutableMapping

import orjson
import structlog

from gateway.settings import LogFormat

# The local part takes every character RFC 5322 allows unquoted (o'brien@, x{@ ...), so none
# of it is left showing and no address escapes the pattern.
_LOCAL = r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~\-]"
_EMAIL = re.compile(rf"({_LOCAL}){_LOCAL}*@([A-Za-z0-9.\-]+\.[A-Za-z]{{2,}})")
# A phone number: a leading + and 7-15 digits, or 10-15 digits standing alone. Separators
# (space, dot, dash, parentheses) may sit between digits as people write them; a date and time
# written with a space (``2024-05-01 12:34``, as ``str(datetime)`` does) is not one.
_PHONE = re.compile(
    r"(?<![\w+])(?!\d{4}-\d\d-\d\d \d)"
    r"(\+\d(?:[ .\-()]*\d){6,14}|\d(?:[ .\-()]*\d){9,14})(?![\w])"
)
_NON_DIGIT = re.compile(r"\D")
# Keys whose values are ours (ids, timestamps): masking them would only hurt ops. Not "event":
# a stdlib record's message lands there.
_SAFE_KEYS = frozenset(
    {"timestamp", "level", "logger", "message_id", "job_id", "status", "channel", "kind",
     "attempt", "duration_ms", "queue", "routing_key", "batch_size", "count"}
)


def mask_email(match: re.Match[str]) -> str:
    return f"{match.group(1)}***@{match.group(2)}"


def mask_phone(match: re.Match[str]) -> str:
    digits = _NON_DIGIT.sub("", match.group(0))
    prefix = "+" if match.group(0).startswith("+") else ""
    return f"{prefix}{'*' * (len(digits) - 2)}{digits[-2:]}"


def mask_personal_data(text: str) -> str:
    """Mask email addresses (``j***@example.com``) and phone numbers (``+*********67``)."""
    if "@" in text:
        text = _EMAIL.sub(mask_email, text)
    return _PHONE.sub(mask_phone, text)


def _mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask_personal_data(value)
    if isinstance(value, dict):
        return {k: _mask_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mask_value(v) for v in value]
    return value


def mask_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask personal data in every value but our own ids and timestamps."""
    for key, value in event_dict.items():
        if key not in _SAFE_KEYS:
            event_dict[key] = _mask_value(value)
    return event_dict


class UtcTimestamper:
    """structlog processor: ``timestamp`` in ISO 8601, UTC, to the µs (``…T19:40:01.123456Z``).

    structlog's ``TimeStamper(fmt="iso", utc=True)`` builds and formats a whole datetime for
    every line (a sixth of the cost of an outcome line); the part up to the second changes once
    a second, so it is formatted once and kept. Unlike ``isoformat()``, the microseconds are
    always there, so every timestamp has the same width.
    """

    __slots__ = ("_second",)

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")  # one tuple: threads never see half an update

    def __call__(
        self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        # Rounded to the microsecond as datetime.fromtimestamp() rounds (a float's fraction
        # alone would lose it: 1830297600.000001 - 1830297600 is 0.95 µs).
        now, micro = divmod(round(time.time() * 1_000_000), 1_000_000)
        second, prefix = self._second
        if now != second:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            self._second = (now, prefix)
        event_dict["timestamp"] = f"{prefix}.{micro:06d}Z"
        return event_dict


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default or str).decode()


def configure_logging(log_format: LogFormat | None = None, level: str = "info") -> None:
    """Configure structlog (and the stdlib root logger it renders for) for this process."""
    if log_format is None:
        log_format = LogFormat.console if sys.stderr.isatty() else LogFormat.json
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if log_format is LogFormat.json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        UtcTimestamper(),
        structlog.processors.format_exc_info,
        mask_processor,
    ]
    numeric_level = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        # One write per line (print() makes two), so the lines of `serve --workers` processes
        # sharing one stderr never run into each other.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries log through the stdlib: render them the same way, masked as well.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric_level, logging.WARNING))
