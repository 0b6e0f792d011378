"""SMTP security per settings: STARTTLS with AUTH, implicit TLS, and a refused login."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import Amqp
from tests.smtp_server import RecordingSmtp
from tests.test_email_flow import email_job, statuses


def _server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


@pytest.fixture
def starttls_server(certificate: tuple[Path, Path]) -> Iterator[RecordingSmtp]:
    server = RecordingSmtp(
        credentials=("mailer", "s3cret-pass"),
        tls_context=_server_context(certificate),
        require_starttls=True,
    )
    server.start()
    yield server
    server.stop()


async def test_starttls_and_auth(
    amqp: Amqp, starttls_server: RecordingSmtp, certificate: tuple[Path, Path],
    settings_for: Any, start_gateway: Any,
) -> None:
    """With smtp_tls=starttls and credentials, the gateway upgrades, logs in and delivers."""
    await start_gateway(settings_for(
        starttls_server, smtp_tls="starttls", smtp_username="mailer",
        smtp_password="s3cret-pass", smtp_ca_file=certificate[0],
    ))
    await amqp.publish(email_job("tls-1"))
    [received] = await starttls_server.wait_for(1)
    assert received.message["X-Gateway-Message-Id"] == "tls-1"
    assert starttls_server.logins == ["mailer"]


async def test_wrong_password_defers_instead_of_failing(
    amqp: Amqp, starttls_server: RecordingSmtp, certificate: tuple[Path, Path],
    settings_for: Any, start_gateway: Any,
) -> None:
    """A refused login is our configuration's fault: the message is deferred, not failed."""
    await start_gateway(settings_for(
        starttls_server, smtp_tls="starttls", smtp_username="mailer",
        smtp_password="wrong", smtp_ca_file=certificate[0], retry_base_seconds=30,
    ))
    await amqp.publish(email_job("tls-bad-login"))
    events = await amqp.wait_events(lambda ev: "deferred" in statuses(ev, "tls-bad-login"))
    assert "535" in events[-1]["reason"]
    assert starttls_server.received == []


async def test_plain_connection_refused_by_a_starttls_only_server(
    amqp: Amqp, starttls_server: RecordingSmtp, settings_for: Any, start_gateway: Any,
) -> None:
    """Without STARTTLS configured, a server that requires it refuses, and nothing is sent."""
    await start_gateway(settings_for(starttls_server, retry_base_seconds=30))
    await amqp.publish(email_job("no-tls"))
    events = await amqp.wait_events(lambda ev: "deferred" in statuses(ev, "no-tls"))
    assert events[-1]["reason"].startswith("SMTP 530")
    assert starttls_server.received == []


@pytest.fixture
def implicit_tls_server(certificate: tuple[Path, Path]) -> Iterator[RecordingSmtp]:
    server = RecordingSmtp(ssl_context=_server_context(certificate))
    server.start()
    yield server
    server.stop()


async def test_implicit_tls(
    amqp: Amqp, implicit_tls_server: RecordingSmtp, certificate: tuple[Path, Path],
    settings_for: Any, start_gateway: Any,
) -> None:
    """With smtp_tls=tls the connection is TLS from the first byte, verified against the CA."""
    await start_gateway(
        settings_for(implicit_tls_server, smtp_tls="tls", smtp_ca_file=certificate[0])
    )
    await amqp.publish(email_job("tls-implicit"))
    [received] = await implicit_tls_server.wait_for(1)
    assert received.message["X-Gateway-Message-Id"] == "tls-implicit"
