"""Log hygiene over the whole session: no secret and no unmasked address in any log line.

A pytest plugin (``pytest_plugins`` in tests/conftest.py). For the whole session it records:

- every structlog event logged in this process, as production renders it: the processors of
  :func:`gateway.logging.configure_logging` (masking included) run first, then a capturing
  processor, then a console renderer to stdout (what pytest shows for a failed test);
- every stdlib log record of WARNING and above (production's root level), its message masked as
  production's ``foreign_pre_chain`` masks it;
- the stderr lines of subprocess gateways that a test hands in with :func:`record_lines`.

At the end of the session every line is checked against the secrets and addresses the suite uses
(:data:`SECRETS`, :data:`ADDRESSES`, plus what tests add with :func:`register_secret` and
:func:`register_address`) and against shapes that are never acceptable in a log: an API key, a
PEM private key, an ``Authorization`` value, an email address or a phone number left unmasked.
Offending lines are printed and the run fails (exit status 1), whatever the tests said.

``structlog.testing.capture_logs()`` blocks bypass the capture (they swap the processors out);
``tests/test_logging.py`` configures its own pipeline and is not captured either.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any

import orjson
import pytest
import structlog

from gateway.logging import _PHONE, configure_logging, mask_personal_data
from gateway.settings import LogFormat

__all__ = ["ADDRESSES", "SECRETS", "record_lines", "register_address", "register_secret"]

# Secret values the suite's gateways are configured with (tests/conftest.py, tests/fake_twilio.py,
# tests/test_inbound.py, tests/test_smtp_tls.py, tests/test_unsubscribe.py,
# tests/test_template_flow.py), and the HTTP Basic credentials the Twilio adapter sends.
SECRETS: set[str] = {
    "test-token-" + "x" * 16,
    "fake-auth-token",
    base64.b64encode(("AC" + "0" * 32 + ":fake-auth-token").encode()).decode(),
    "vonage-signature-secret",
    "s3cret-pass",
    "unsubscribe-secret-" + "s" * 16,
    "s" * 32,
}
# Recipients and senders the suite sends to or receives from (tests/test_email_flow.py,
# tests/test_shutdown.py, tests/test_sms_flow.py, tests/test_inbound.py, tests/test_faults.py).
ADDRESSES: set[str] = {
    "jane@example.com",
    "tempfail-2@example.com",
    "tempfail-9@example.com",
    "reject@example.com",
    "clean@example.com",
    "fine@example.com",
    "now@example.com",
    "x@evil.example",
    *(f"user{i}@example.com" for i in (0, 1, 7, 42, 599)),
    "+447911123456",
    "+14155550199",
    "+14155550123",
    "+447910021610",
    "+447910000429",
    "+447911999999",
}

# Shapes never acceptable in a log line, whatever the test.
_NEVER = {
    "an API key": re.compile(r"\bgw_[0-9a-f]{8}_[A-Za-z0-9_-]{43}"),
    "a private key": re.compile(r"PRIVATE KEY-----"),
    "an Authorization value": re.compile(r"\b(?:Basic|Bearer) [A-Za-z0-9+/=._~-]{16,}"),
    "an unsubscribe token": re.compile(r"/v1/unsubscribe/[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{20,}"),
}
_EMAIL = re.compile(r"([A-Za-z0-9.!#$%&'*+/=?^_`{|}~\-]+)@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")

_lines: list[tuple[str, str]] = []  # (where, line)
_current = "session"
_extra_secrets: set[str] = set()
_extra_addresses: set[str] = set()


def register_secret(*values: str) -> None:
    """Fail the session if any of ``values`` appears in a log line."""
    _extra_secrets.update(v for v in values if v)


def register_address(*values: str) -> None:
    """Fail the session if any of ``values`` (an email address or a phone number) appears
    unmasked in a log line."""
    _extra_addresses.update(v for v in values if v)


def record_lines(source: str, lines: Iterable[bytes | str]) -> None:
    """Hand in log lines produced outside this process (a subprocess gateway's stderr)."""
    for line in lines:
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        if text.strip():
            _lines.append((f"{source} ({_current})", text.rstrip("\n")))


def _capture(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    _lines.append((_current, orjson.dumps(dict(event_dict), default=str).decode()))
    return event_dict


class _StdlibCapture(logging.Handler):
    """Stdlib records as production renders them: the message masked, the traceback too."""

    def emit(self, record: logging.LogRecord) -> None:
        entry = {"logger": record.name, "level": record.levelname.lower(),
                 "event": mask_personal_data(record.getMessage())}
        if record.exc_info:
            entry["exception"] = mask_personal_data(logging.Formatter().formatException(record.exc_info))
        _lines.append((_current, orjson.dumps(entry).decode()))


_STDLIB = _StdlibCapture(level=logging.WARNING)


def _production_processors() -> list[Any]:
    """The processors ``configure_logging`` installs, less its renderer (root logger untouched)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging(LogFormat.json)
        return list(structlog.get_config()["processors"])[:-1]
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def _install() -> None:
    if _capture not in structlog.get_config()["processors"]:
        structlog.configure(
            processors=[*_production_processors(), _capture,
                        structlog.dev.ConsoleRenderer(colors=False)],
            wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
            logger_factory=structlog.PrintLoggerFactory(),
            cache_logger_on_first_use=False,
        )
    root = logging.getLogger()
    if _STDLIB not in root.handlers:
        root.addHandler(_STDLIB)


@pytest.fixture(autouse=True)
def _capture_logs(request: pytest.FixtureRequest) -> Iterator[None]:
    """Before each test: (re)install the capture (a test may have reset structlog)."""
    global _current
    _current = request.node.nodeid
    _install()
    yield
    _current = "session"


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _values(line: str) -> list[str]:
    """The string values of a JSON line (numbers are never masked: not phone numbers), or the
    line itself when it is not JSON."""
    try:
        return list(_strings(orjson.loads(line)))
    except orjson.JSONDecodeError:
        return [line]


def problems(line: str, where: str = "") -> list[str]:
    """What is wrong with one log line: the secrets, addresses and shapes it contains.

    The name of the test that logged it is left out: in-process gateways are named after their
    test, whose parameters may spell a test number (``[%2B14155550199]``)."""
    test_name = where.split(" (")[-1].rstrip(")").rpartition("::")[2]
    if test_name:
        line = line.replace(test_name, "")
    found = [f"secret {s[:4]}…" for s in SECRETS | _extra_secrets if s in line]
    lowered = line.lower()
    for address in ADDRESSES | _extra_addresses:
        forms = {address.lower()}
        if address.startswith("+") and len(address) > 9:
            forms.add(address[1:])  # as Vonage writes it
        if any(form in lowered for form in forms):
            found.append(f"address {mask_personal_data(address)}")
    found += [name for name, pattern in _NEVER.items() if pattern.search(line)]
    for value in _values(line):
        found += [f"unmasked email {m[0]!r}" for m in _EMAIL.finditer(value)
                  if not re.fullmatch(r".\*\*\*", m[1])]
        # _PHONE is the very pattern production masks with.
        found += [f"unmasked phone {m[0]!r}" for m in _PHONE.finditer(value)]
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run, listing the offending lines, if any log line leaked."""
    offending = [(where, line, found) for where, line in _lines if (found := problems(line, where))]
    if not offending:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_sep("=", f"log hygiene: {len(offending)} log line(s) leak", red=True)
        for where, line, found in offending[:50]:
            reporter.write_line(f"{where}: {', '.join(found)}\n    {line[:500]}")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
