"""Bulk import of users: parsing (pure), batched writes, the CLI and the HTTP upload."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from gateway.app import Gateway
from gateway.importer import (
    ImportFailed,
    Row,
    detect_format,
    import_users,
    read_rows,
    read_upload,
)
from gateway.recipients import Recipients
from tests.test_api import OpenClient, error_of, http_gateway, open_client

__all__ = ["http_gateway", "open_client"]  # fixtures used here, defined with the API tests

HEADER = "id,timezone,locale,email,sms,push_token,push_platform,attr.plan\n"
# Line numbers in the comments: the header is line 1.
GOOD_AND_BAD_CSV = (
    HEADER
    + "ana,Europe/Lisbon,pt-BR,Ana@Example.COM,+351 912 345 678,,,pro\n"  # 2 good
    + "bob,Mars/Base,,,,,,\n"  # 3 bad time zone
    + "\n"  # 4 blank: skipped
    + 'cy,,,"cy@example.com;cy@work.example.com",,,,"two\nlines"\n'  # 5-6 good, multi-line cell
    + "dee,,,,4155550100,,,\n"  # 7 bad phone
    + "eve,,,,,tok-1;tok-2,apns,\n"  # 8 good, one platform for both tokens
    + "fay,,,,,tok-3,,\n"  # 9 bad: push without platform
    + "gus,,,too,many,fields,here,x,y\n"  # 10 bad field count
    + ",,,,,,,\n"  # 11 bad: no id
    + "hal,UTC,,,+1 (415) 555-0100,,,\n"  # 12 good
)


def rows_of(text: str | bytes, fmt: str) -> list[Row]:
    """Every row read from ``text`` in format ``fmt``."""
    data = text.encode() if isinstance(text, str) else text
    return list(read_rows(io.BytesIO(data), fmt))  # type: ignore[arg-type]


def rejected(rows: list[Row]) -> dict[int, str]:
    """Line number to reason, for the rejected rows."""
    return {r.line: r.reason or "" for r in rows if r.user is None}


# -- parsing (pure) ----------------------------------------------------------------------------


def test_csv_rows_are_validated_with_their_line_numbers() -> None:
    """Good CSV rows become users and bad ones carry their first line number and a reason naming the column."""
    rows = rows_of(GOOD_AND_BAD_CSV, "csv")
    assert {r.line: r.user.id for r in rows if r.user} == {2: "ana", 5: "cy", 8: "eve", 12: "hal"}
    reasons = rejected(rows)
    assert sorted(reasons) == [3, 7, 9, 10, 11]
    assert reasons[3].startswith("timezone: unknown time zone 'Mars/Base'")
    assert reasons[7].startswith("sms: invalid phone number")
    assert reasons[9].startswith("push_platform: a push endpoint needs a platform")
    assert reasons[10] == "expected 8 fields as in the header, got 9"
    assert reasons[11].startswith("id:")


def test_csv_cells_become_endpoints_and_attributes() -> None:
    """Addresses split on ';' and are normalised, a single push_platform applies to every token, attr.* columns become string attributes."""
    users = {r.user.id: r.user for r in rows_of(GOOD_AND_BAD_CSV, "csv") if r.user}
    ana = users["ana"]
    assert (ana.timezone, ana.locale, ana.attributes) == ("Europe/Lisbon", "pt-BR", {"plan": "pro"})
    assert [(e.channel, e.address) for e in ana.endpoints] == [
        ("email", "Ana@example.com"),
        ("sms", "+351912345678"),
    ]
    assert [e.address for e in users["cy"].endpoints] == ["cy@example.com", "cy@work.example.com"]
    assert users["cy"].attributes == {"plan": "two\nlines"}
    assert [(e.address, e.platform) for e in users["eve"].endpoints] == [
        ("tok-1", "apns"),
        ("tok-2", "apns"),
    ]
    assert users["hal"].endpoints[0].address == "+14155550100"


def test_push_platforms_may_be_given_one_per_token() -> None:
    """push_platform may list one platform per token; another count is rejected."""
    rows = rows_of("id,push_token,push_platform\na,t1;t2,apns;fcm\nb,t1;t2;t3,apns;fcm\n", "csv")
    assert [(e.address, e.platform) for e in rows[0].user.endpoints] == [
        ("t1", "apns"),
        ("t2", "fcm"),
    ]  # type: ignore[union-attr]
    assert rejected(rows) == {3: "push_platform: give one platform, or one per push_token"}


def test_a_csv_row_that_is_not_utf8_is_rejected_alone() -> None:
    """A row with bytes that are not UTF-8 is rejected; the rows around it are imported."""
    data = b"id,attr.name\r\na,Ana\r\nb,\xff\xfe\r\nc,Cy\r\n"
    rows = rows_of(data, "csv")
    assert [r.user.id for r in rows if r.user] == ["a", "c"]
    assert rejected(rows) == {3: "not valid UTF-8"}


def test_csv_with_a_byte_order_mark_reads_its_first_column() -> None:
    """A UTF-8 byte order mark (as Excel writes) does not become part of the first column's name."""
    rows = rows_of("\ufeffid,locale\nana,pt-BR\n".encode(), "csv")
    assert rows[0].user is not None and rows[0].user.locale == "pt-BR"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "the file is empty"),
        ("timezone,email\nUTC,a@example.com\n", "no 'id' column"),
        ("id,phone\n", "unknown column 'phone'"),
        ("id,sms,sms\n", "appears twice"),
    ],
)
def test_a_csv_header_that_cannot_be_imported_fails_the_whole_file(text: str, words: str) -> None:
    """An empty file or a header without id, with an unknown or repeated column raises ImportFailed before any row is read."""
    with pytest.raises(ImportFailed) as caught:
        read_rows(io.BytesIO(text.encode()), "csv")
    assert words in str(caught.value)


def test_json_lines_rows_are_validated_with_their_line_numbers() -> None:
    """Each non-blank line is one user object; invalid JSON, non-objects and invalid users are rejected with their line."""
    lines = [
        '{"id": "ana", "endpoints": [{"channel": "sms", "address": "+1 415 555 0100"}]}',
        "",
        '{"id": "bob", "timezone": "Nowhere"}',
        '{"id": "cy",',
        "[1, 2]",
        '{"id": "dee", "attributes": {"tier": 2}, "locale": "en_gb"}',
        '{"id": "eve", "endpoints": [{"channel": "push", "address": "t"}]}',
    ]
    rows = rows_of("\n".join(lines) + "\n", "jsonl")
    assert {r.line: r.user.id for r in rows if r.user} == {1: "ana", 6: "dee"}
    reasons = rejected(rows)
    assert sorted(reasons) == [3, 4, 5, 7]
    assert reasons[3].startswith("timezone:")
    assert reasons[4].startswith("invalid JSON")
    assert reasons[5] == "a user object expected, got list"
    assert reasons[7].startswith("endpoints.0.platform:")
    dee = next(r.user for r in rows if r.user and r.user.id == "dee")
    assert (dee.locale, dee.attributes) == ("en-GB", {"tier": 2})


@pytest.mark.parametrize(
    ("name", "head", "expected"),
    [
        ("users.csv", b"{", "csv"),
        ("users.JSONL", b"id,", "jsonl"),
        ("users.ndjson", b"id,", "jsonl"),
        ("users.txt", b'  \n{"id": "a"}', "jsonl"),
        (None, b"\xef\xbb\xbf{", "jsonl"),
        (None, b"id,email\n", "csv"),
    ],
)
def test_format_is_told_by_extension_then_first_character(
    name: str | None, head: bytes, expected: str
) -> None:
    """A known extension decides the format; otherwise a first non-blank '{' means JSON lines, anything else CSV."""
    assert detect_format(name, head) == expected


# -- writing -----------------------------------------------------------------------------------


async def test_import_writes_good_rows_and_counts_imported_and_updated(
    clean: None, pg_pool: asyncpg.Pool
) -> None:
    """Good rows are written in batches, bad ones only counted; importing again counts updates, and a user's endpoint set is replaced."""
    recipients = Recipients(pool=pg_pool)
    summary = await import_users(
        rows_of(GOOD_AND_BAD_CSV, "csv"), recipients=recipients, batch_size=2
    )
    assert (summary.imported, summary.updated, summary.rejected_count) == (4, 0, 5)
    assert [r["line"] for r in summary.rejected] == [3, 7, 9, 10, 11]
    ana = await recipients.get("ana")
    assert ana is not None and len(ana["endpoints"]) == 2

    again = HEADER + "ana,,,ana@example.com,,,,\nzed,,,,,,,\n"
    summary = await import_users(rows_of(again, "csv"), recipients=recipients)
    assert summary.to_json() == {"imported": 1, "updated": 1, "rejected": [], "rejected_count": 0}
    ana = await recipients.get("ana")
    assert ana is not None
    assert [e["address"] for e in ana["endpoints"]] == ["ana@example.com"]
    assert (ana["timezone"], ana["attributes"]) == (None, {})


async def test_a_user_twice_in_one_batch_is_written_once_as_its_last_row(
    clean: None, pg_pool: asyncpg.Pool
) -> None:
    """When an id repeats within a batch, the last row wins and the earlier one counts as an update."""
    text = HEADER + "ana,,,first@example.com,,,,\nana,,,second@example.com,,,,\n"
    recipients = Recipients(pool=pg_pool)
    summary = await import_users(rows_of(text, "csv"), recipients=recipients)
    assert (summary.imported, summary.updated) == (1, 1)
    ana = await recipients.get("ana")
    assert ana is not None and [e["address"] for e in ana["endpoints"]] == ["second@example.com"]


async def test_only_the_first_1000_rejections_are_listed(
    clean: None, pg_pool: asyncpg.Pool
) -> None:
    """rejected lists the first 1000 bad rows and rejected_count counts all of them."""
    text = "id,timezone\n" + "".join(f"u{i},Nowhere/{i}\n" for i in range(1005)) + "ok,UTC\n"
    summary = await import_users(rows_of(text, "csv"), recipients=Recipients(pool=pg_pool))
    assert (summary.imported, summary.rejected_count, len(summary.rejected)) == (1, 1005, 1000)
    assert summary.rejected[-1]["line"] == 1001


# -- the CLI -----------------------------------------------------------------------------------


async def run_cli(database_url: str, *args: str) -> tuple[int, str, str]:
    """Run ``python -m gateway import-users ...`` with only the database configured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(GATEWAY_DATABASE_URL=database_url, GATEWAY_LOG_FORMAT="json")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "import-users",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_cli_prints_the_summary_and_exits_0_despite_rejected_rows(
    clean: None, database_url: str, pg_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """gateway import-users FILE imports the good rows, prints the summary JSON on stdout, no progress bar off a terminal, and exits 0."""
    path = tmp_path / "users.csv"
    path.write_text(GOOD_AND_BAD_CSV)
    status, stdout, stderr = await run_cli(database_url, str(path))
    assert status == 0, stderr
    summary = orjson.loads(stdout)
    assert (summary["imported"], summary["updated"], summary["rejected_count"]) == (4, 0, 5)
    assert summary["rejected"][0] == {
        "line": 3,
        "reason": "timezone: unknown time zone 'Mars/Base' (an IANA name such as Europe/Lisbon)",
    }
    assert "%" not in stderr
    assert await pg_pool.fetchval("SELECT count(*) FROM users") == 4


async def test_cli_reads_json_lines_by_extension(
    clean: None, database_url: str, tmp_path: Path
) -> None:
    """A .ndjson file is read as JSON lines."""
    path = tmp_path / "users.ndjson"
    path.write_text('{"id": "ana"}\n{"id": "bob", "locale": "xx-"}\n')
    status, stdout, _ = await run_cli(database_url, str(path))
    assert status == 0
    assert orjson.loads(stdout)["imported"] == 1


@pytest.mark.parametrize(
    ("name", "content"), [("missing.csv", None), ("bad.csv", "id,phone\nx,1\n")]
)
async def test_cli_exits_1_when_the_file_cannot_be_imported(
    name: str,
    content: str | None,
    clean: None,
    database_url: str,
    pg_pool: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    """A file that cannot be read, or whose header is wrong, exits 1 with a one-line reason and writes nothing."""
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    status, stdout, stderr = await run_cli(database_url, str(path))
    assert status == 1
    assert stdout == ""
    assert stderr.startswith(f"gateway: cannot import {path}:")
    assert await pg_pool.fetchval("SELECT count(*) FROM users") == 0


@pytest.mark.slow
@pytest.mark.timeout(900)  # 300,000 rows written twice: 120 s was not enough on a slow guest
async def test_cli_imports_100000_rows(
    clean: None, database_url: str, pg_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """100,000 CSV rows with three endpoints each are all imported by the CLI, then all updated."""
    path = tmp_path / "users.csv"
    with path.open("w") as out:
        out.write("id,timezone,locale,email,sms,push_token,push_platform,attr.plan\n")
        for i in range(100_000):
            out.write(
                f"u{i},Europe/Lisbon,pt-BR,U{i}@Example.com,+1 415 {2000000 + i},t{i},fcm,pro\n"
            )
    status, stdout, stderr = await run_cli(database_url, str(path))
    assert status == 0, stderr
    assert orjson.loads(stdout) == {
        "imported": 100_000,
        "updated": 0,
        "rejected": [],
        "rejected_count": 0,
    }
    assert await pg_pool.fetchval("SELECT count(*) FROM endpoints") == 300_000
    status, stdout, _ = await run_cli(database_url, str(path))
    assert orjson.loads(stdout)["updated"] == 100_000


# -- the HTTP upload ---------------------------------------------------------------------------


async def test_multipart_upload_is_imported(http_gateway: Gateway, open_client: OpenClient) -> None:
    """POST /v1/users:import with a multipart 'file' part answers 200 with the summary, and the users exist."""
    form = aiohttp.FormData()
    form.add_field("note", "ignored")
    form.add_field("file", GOOD_AND_BAD_CSV.encode(), filename="users.csv", content_type="text/csv")
    client = open_client(http_gateway)
    async with client.post("/v1/users:import", data=form) as response:
        assert response.status == 200
        summary = await response.json()
    assert (summary["imported"], summary["rejected_count"]) == (4, 5)
    assert [r["line"] for r in summary["rejected"]] == [3, 7, 9, 10, 11]
    async with client.get("/v1/users/hal") as response:
        assert (await response.json())["endpoints"][0]["address"] == "+14155550100"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/csv", b"id,email\nana,ana@example.com\nbob,bob@example.com\n"),
        ("application/x-ndjson", b'{"id": "ana"}\n\n{"id": "bob"}\n'),
    ],
)
async def test_raw_upload_is_imported(
    content_type: str, body: bytes, http_gateway: Gateway, open_client: OpenClient
) -> None:
    """A raw CSV or JSON-lines body is imported, its format told by its first character."""
    headers = {"Content-Type": content_type}
    client = open_client(http_gateway)
    async with client.post("/v1/users:import", data=body, headers=headers) as response:
        assert response.status == 200
        assert await response.json() == {
            "imported": 2,
            "updated": 0,
            "rejected": [],
            "rejected_count": 0,
        }
    async with client.post("/v1/users:import", data=body, headers=headers) as response:
        assert (await response.json())["updated"] == 2


async def test_upload_of_another_media_type_is_answered_415(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """A raw body that is neither CSV nor JSON lines is answered 415 unsupported_media_type."""
    async with open_client(http_gateway).post("/v1/users:import", json={"id": "ana"}) as response:
        assert response.status == 415
        assert (await error_of(response))["code"] == "unsupported_media_type"


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"other": "id\nana\n"}, "no part named 'file'"),
        ({"file": "id,phone\nana,1\n"}, "unknown column 'phone'"),
    ],
)
async def test_upload_that_cannot_be_imported_is_answered_422(
    data: dict[str, Any], words: str, http_gateway: Gateway, open_client: OpenClient
) -> None:
    """A multipart body without a 'file' part, or a file with a bad header, is answered 422 naming file."""
    form = aiohttp.FormData()
    for name, text in data.items():
        form.add_field(name, text.encode(), filename="users.csv", content_type="text/csv")
    async with open_client(http_gateway).post("/v1/users:import", data=form) as response:
        assert response.status == 422
        error = await error_of(response)
    assert error["message"].startswith("file:")
    assert words in error["message"]


def test_an_upload_is_sniffed_from_its_first_character() -> None:
    """read_upload reads JSON lines when the first non-blank character is '{', CSV otherwise, and leaves nothing behind."""
    assert [r.user.id for r in read_upload(io.BytesIO(b'\n {"id": "a"}\n')) if r.user] == ["a"]
    assert [r.user.id for r in read_upload(io.BytesIO(b"id\nb\n")) if r.user] == ["b"]


async def test_an_upload_may_be_larger_than_max_request_bytes(
    amqp: Any, settings_for: Any, start_gateway: Any, open_client: OpenClient
) -> None:
    """An import upload is streamed, so GATEWAY_MAX_REQUEST_BYTES (for JSON bodies) does not limit it."""
    gateway = await start_gateway(settings_for(max_request_bytes=4096), consume=False)
    body = ("id,attr.note\n" + "".join(f"u{i},{'x' * 60}\n" for i in range(500))).encode()
    assert len(body) > 8 * 4096
    form = aiohttp.FormData()
    form.add_field("file", body, filename="users.csv", content_type="text/csv")
    client = open_client(gateway)
    async with client.post("/v1/users:import", data=form) as response:
        assert response.status == 200
        assert (await response.json())["imported"] == 500
    headers = {"Content-Type": "text/csv"}
    async with client.post("/v1/users:import", data=body, headers=headers) as response:
        assert response.status == 200
        assert (await response.json())["updated"] == 500
