"""The sandbox sender and its outbox."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from adapters.base import OutboundEmail, OutboundPush, OutboundSms, Sender
from adapters.errors import PermanentSendError, TransientSendError
from adapters.sandbox import Outbox, SandboxSender


def _email(message_id: str = "m-1", to: str = "ada@example.com") -> OutboundEmail:
    return OutboundEmail(
        message_id=message_id,
        to=to,
        from_="Gateway <noreply@example.com>",
        subject="Hello",
        text="Hi Ada",
        html="<p>Hi Ada</p>",
        headers={"List-Unsubscribe": "<https://example.com/u>"},
    )


def test_outbox_records_newest_first() -> None:
    """Records come back newest first."""
    outbox = Outbox()
    for n in range(3):
        outbox.add({"n": n})
    assert [r["n"] for r in outbox.records()] == [2, 1, 0]


def test_outbox_keeps_only_the_last_limit_records() -> None:
    """Past ``limit``, the oldest records are dropped."""
    outbox = Outbox(limit=2)
    for n in range(5):
        outbox.add({"n": n})
    assert [r["n"] for r in outbox.records()] == [4, 3]


def test_outbox_appends_json_lines_to_its_file(tmp_path: Path) -> None:
    """Each record is appended to the file as one JSON line, the parent directory created."""
    path = tmp_path / "nested" / "dir" / "outbox.jsonl"
    outbox = Outbox(limit=1, path=path)
    outbox.add({"n": 1, "text": "é\nline"})
    outbox.add({"n": 2})
    lines = path.read_bytes().splitlines()
    assert [orjson.loads(line) for line in lines] == [{"n": 1, "text": "é\nline"}, {"n": 2}]


def test_outbox_clear_forgets_memory_but_keeps_the_file(tmp_path: Path) -> None:
    """``clear`` empties the in-memory records and leaves the file alone."""
    path = tmp_path / "outbox.jsonl"
    outbox = Outbox(path=path)
    outbox.add({"n": 1})
    outbox.clear()
    assert outbox.records() == []
    assert len(path.read_bytes().splitlines()) == 1


async def test_email_is_recorded_with_its_content() -> None:
    """An email becomes a record with addresses, subject, both parts, headers and a UTC time."""
    outbox = Outbox()
    sender = SandboxSender(channel="email", outbox=outbox)
    result = await sender.send(_email())
    [record] = outbox.records()
    assert result.provider_message_id is not None
    assert result.provider_message_id.startswith("sandbox-")
    assert len(result.provider_message_id) == len("sandbox-") + 32
    sent_at = datetime.fromisoformat(record.pop("sent_at"))
    assert sent_at.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - sent_at) < timedelta(seconds=5)
    assert record == {
        "channel": "email",
        "message_id": "m-1",
        "to": "ada@example.com",
        "from": "Gateway <noreply@example.com>",
        "subject": "Hello",
        "text": "Hi Ada",
        "html": "<p>Hi Ada</p>",
        "headers": {"List-Unsubscribe": "<https://example.com/u>"},
        "provider_message_id": result.provider_message_id,
    }


async def test_sms_and_push_are_recorded_with_their_content() -> None:
    """An SMS records its body; a push its title, body, data and silent flag."""
    outbox = Outbox()
    await SandboxSender(channel="sms", outbox=outbox).send(
        OutboundSms(message_id="s-1", to="+447700900123", from_=None, body="Your code is 1234")
    )
    await SandboxSender(channel="push", outbox=outbox).send(
        OutboundPush(
            message_id="p-1", to="tok", title="Hi", body="There", data={"k": 1}, silent=True
        )
    )
    push, sms = outbox.records()
    assert (sms["channel"], sms["to"], sms["from"], sms["body"]) == (
        "sms",
        "+447700900123",
        None,
        "Your code is 1234",
    )
    assert (push["channel"], push["title"], push["body"], push["data"], push["silent"]) == (
        "push",
        "Hi",
        "There",
        {"k": 1},
        True,
    )


async def test_two_sends_get_different_provider_ids() -> None:
    """Every send gets its own provider message id."""
    sender = SandboxSender(channel="email", outbox=Outbox())
    first = await sender.send(_email("m-1"))
    second = await sender.send(_email("m-2"))
    assert first.provider_message_id != second.provider_message_id


@pytest.mark.parametrize(
    ("address", "error"),
    [
        ("fail-permanent@example.com", PermanentSendError),
        ("someone+FAIL-PERMANENT@example.com", PermanentSendError),
        ("fail-transient@example.com", TransientSendError),
    ],
)
async def test_magic_addresses_fail_and_record_nothing(
    address: str, error: type[Exception]
) -> None:
    """An address containing fail-permanent / fail-transient raises that error and sends nothing."""
    outbox = Outbox()
    sender = SandboxSender(channel="email", outbox=outbox)
    with pytest.raises(error, match="^sandbox: "):
        await sender.send(_email(to=address))
    assert outbox.records() == []


async def test_magic_sms_number_fails_transiently() -> None:
    """The magic words work for SMS recipients too."""
    sender = SandboxSender(channel="sms", outbox=Outbox())
    with pytest.raises(TransientSendError):
        await sender.send(OutboundSms(message_id="s", to="fail-transient", from_=None, body="x"))


async def test_close_does_nothing() -> None:
    """``close`` returns and the sender still works afterwards."""
    outbox = Outbox()
    sender: Sender = SandboxSender(channel="email", outbox=outbox)
    await sender.close()
    await sender.send(_email())
    assert sender.channel == "email"
    assert len(outbox.records()) == 1
