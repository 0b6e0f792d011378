"""API keys: scopes and the key format (pure), the keyring's cache, the ``gateway keys`` CLI, the
``/v1/keys`` routes, and a walk over every ``/v1`` route refusing a missing, wrong or revoked key
and a scope too small."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.api import SIGNED_PREFIXES, scope_of
from gateway.app import Gateway
from gateway.keys import Keyring, Scope, StoredKey, hash_secret, new_key, parse_key
from tests.conftest import API_TOKEN, Amqp, bare_app
from tests.test_api import OpenClient, error_of, http_gateway, open_client

__all__ = ["http_gateway", "open_client"]  # fixtures used here, defined with the API tests

NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)
UNKNOWN_KEY = "gw_00000000_" + "A" * 43


# -- scopes and the key format (pure) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("held", "allowed"),
    [
        (Scope.read, {Scope.read}),
        (Scope.send, {Scope.read, Scope.send}),
        (Scope.admin, {Scope.read, Scope.send, Scope.admin}),
    ],
)
def test_scopes_form_a_chain_admin_over_send_over_read(held: Scope, allowed: set[Scope]) -> None:
    """A key may do what its scope names and everything below it in admin ⊇ send ⊇ read."""
    assert {needed for needed in Scope if held.allows(needed)} == allowed


def test_a_new_key_parses_back_to_its_id_and_secret() -> None:
    """new_key gives gw_<8 hex>_<43 URL-safe chars>, and parse_key reads the id and secret back."""
    key_id, secret, key = new_key()
    assert re.fullmatch(r"gw_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", key)
    assert parse_key(key) == (key_id, secret)


@pytest.mark.parametrize(
    "token",
    [
        "",
        API_TOKEN,
        "gw_0000000_" + "A" * 43,
        "gw_00000000_" + "A" * 42,
        "gw_0000000G_" + "A" * 43,
        "GW_00000000_" + "A" * 43,
        "gw_00000000_" + "A" * 42 + "=",
        "gw_00000000_" + "A" * 44,
    ],
)
def test_anything_but_the_key_format_is_not_a_key(token: str) -> None:
    """parse_key answers None for every string that is not exactly in the key format."""
    assert parse_key(token) is None


class FakeKeys:
    """A stand-in for ApiKeys holding one row, counting look-ups and recorded uses."""

    def __init__(self, row: StoredKey) -> None:
        self.row: StoredKey | None = row
        self.finds = 0
        self.touches: list[datetime] = []

    async def find(self, key_id: str) -> StoredKey | None:
        self.finds += 1
        return self.row if self.row is not None and self.row.id == key_id else None

    async def touch(self, key_id: str, *, now: datetime) -> None:
        self.touches.append(now)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stored(scope: Scope = Scope.send) -> tuple[str, StoredKey]:
    key_id, secret, key = new_key()
    return key, StoredKey(key_id, "ci", scope, hash_secret(secret), revoked=False)


async def test_keyring_trusts_a_row_for_the_ttl_then_sees_its_revocation() -> None:
    """A looked-up key is kept ttl seconds: its revocation is seen once the ttl has passed."""
    key, row = stored()
    keys, clock = FakeKeys(row), Clock()
    keyring = Keyring(bootstrap=None, ttl=5, clock=clock)
    principal = await keyring.verify(key, keys, now=NOW)  # type: ignore[arg-type]
    assert principal is not None and (principal.key_id, principal.scope) == (row.id, Scope.send)

    keys.row = replace(row, revoked=True)
    clock.now += 4.9
    assert await keyring.verify(key, keys, now=NOW) is not None  # type: ignore[arg-type]
    assert keys.finds == 1
    clock.now += 0.2
    assert await keyring.verify(key, keys, now=NOW) is None  # type: ignore[arg-type]
    assert keys.finds == 2


async def test_keyring_checks_the_secret_even_when_the_row_is_cached() -> None:
    """A cached row does not let a wrong secret with the right id through."""
    key, row = stored()
    keys = FakeKeys(row)
    keyring = Keyring(bootstrap=None, ttl=60, clock=Clock())
    assert await keyring.verify(key, keys, now=NOW) is not None  # type: ignore[arg-type]
    forged = key[:-1] + ("B" if key[-1] != "B" else "C")
    assert await keyring.verify(forged, keys, now=NOW) is None  # type: ignore[arg-type]


async def test_keyring_records_a_use_at_most_once_a_minute() -> None:
    """last_used_at is written on the first use and then at most once every 60 s per key."""
    key, row = stored()
    keys, clock = FakeKeys(row), Clock()
    keyring = Keyring(bootstrap=None, ttl=0, clock=clock)
    for _ in range(3):
        await keyring.verify(key, keys, now=NOW)  # type: ignore[arg-type]
        clock.now += 20
    assert len(keys.touches) == 1
    await keyring.verify(key, keys, now=NOW)  # type: ignore[arg-type]
    assert len(keys.touches) == 2


async def test_keyring_takes_the_bootstrap_token_as_admin_without_a_look_up() -> None:
    """GATEWAY_API_TOKEN is an admin key that needs no database."""
    _, row = stored()
    keys = FakeKeys(row)
    principal = await Keyring(bootstrap=API_TOKEN, ttl=0).verify(API_TOKEN, keys, now=NOW)  # type: ignore[arg-type]
    assert principal is not None and principal.scope is Scope.admin
    assert keys.finds == 0


# -- the CLI -------------------------------------------------------------------------------------


async def run_keys(database_url: str, *args: str) -> tuple[int, str, str]:
    """Run ``python -m gateway keys ...`` with only the database configured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(GATEWAY_DATABASE_URL=database_url, GATEWAY_LOG_FORMAT="json")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "keys",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_cli_creates_lists_and_revokes_keys_keeping_only_a_hash(
    clean: None, database_url: str, pg_pool: asyncpg.Pool
) -> None:
    """keys create prints the key once and stores only sha256 of its secret; list never shows it; revoke takes an id or an active name."""
    code, key, err = await run_keys(database_url, "create", "--name", "ci", "--scope", "send")
    assert code == 0, err
    key = key.strip()
    key_id, secret = parse_key(key) or pytest.fail(f"not a key: {key!r}")
    assert f"created key {key_id} (ci, scope send)" in err
    row = await pg_pool.fetchrow("SELECT * FROM api_keys")
    assert row["secret_hash"] == hashlib.sha256(secret.encode()).digest()
    assert secret.encode() not in b"".join(str(v).encode() for v in row.values())

    code, listing, _ = await run_keys(database_url, "list")
    assert code == 0
    header, line = listing.splitlines()
    assert header.split() == ["ID", "NAME", "SCOPE", "CREATED", "LAST", "USED", "REVOKED"]
    assert line.split()[:3] == [key_id, "ci", "send"] and line.endswith("-")
    assert secret not in listing

    assert (await run_keys(database_url, "create", "--name", "ci", "--scope", "read"))[0] == 1
    assert (await run_keys(database_url, "create", "--name", "not ok", "--scope", "read"))[0] == 2
    code, _, err = await run_keys(database_url, "revoke", "ci")
    assert (code, err.strip()) == (0, f"revoked key {key_id} (ci)")
    assert (await run_keys(database_url, "revoke", "ci"))[0] == 1  # no active key by that name
    assert (await run_keys(database_url, "revoke", key_id))[0] == 0  # by id: already revoked
    code, listing, _ = await run_keys(database_url, "list")
    assert not listing.splitlines()[1].endswith("-")  # the revoked time is shown
    assert (await run_keys(database_url, "create", "--name", "ci", "--scope", "read"))[0] == 0


async def test_a_cli_key_works_within_its_scope_until_it_is_revoked(
    amqp: Amqp,
    database_url: str,
    pg_pool: asyncpg.Pool,
    settings_for: Any,
    start_gateway: Any,
    open_client: OpenClient,
) -> None:
    """A read key made by the CLI reads (its use recorded), is refused sending with 403, and after keys revoke is refused with 401."""
    gateway: Gateway = await start_gateway(settings_for(), consume=False)
    _, key, _ = await run_keys(database_url, "create", "--name", "dashboard", "--scope", "read")
    client = open_client(gateway, token=key.strip())
    async with client.get("/v1/limits") as response:
        assert response.status == 200
    assert await pg_pool.fetchval("SELECT last_used_at FROM api_keys") is not None
    async with client.post("/v1/messages", json={}) as response:
        assert response.status == 403
        error = await error_of(response)
    assert error["code"] == "forbidden"
    assert error["message"] == "this route needs a key with scope send; this key's scope is read"

    assert (await run_keys(database_url, "revoke", "dashboard"))[0] == 0
    async with client.get("/v1/limits") as response:
        assert response.status == 401
        assert (await error_of(response))["code"] == "unauthorized"


# -- /v1/keys ------------------------------------------------------------------------------------


async def test_keys_are_made_listed_and_revoked_over_http(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """POST /v1/keys answers the key once (409 for a taken name), GET lists keys without secrets, DELETE revokes (204 again, 404 unknown)."""
    admin = open_client(http_gateway)
    async with admin.post("/v1/keys", json={"name": "sender", "scope": "send"}) as response:
        assert response.status == 201
        made = await response.json()
    assert set(made) == {"id", "name", "scope", "created_at", "last_used_at", "revoked_at", "key"}
    assert parse_key(made["key"]) is not None and made["key"].startswith(f"gw_{made['id']}_")
    async with admin.post("/v1/keys", json={"name": "sender", "scope": "read"}) as response:
        assert response.status == 409
        assert (await error_of(response))["code"] == "conflict"
    async with admin.post("/v1/keys", json={"name": "x", "scope": "root"}) as response:
        assert response.status == 422
        assert (await error_of(response))["message"].startswith("scope:")

    sender = open_client(http_gateway, token=made["key"])
    async with sender.get("/v1/keys") as response:
        assert response.status == 403  # keys are admin business
    async with admin.get("/v1/keys") as response:
        listed = (await response.json())["items"]
    assert listed == [
        {k: v for k, v in made.items() if k != "key"} | {"last_used_at": listed[0]["last_used_at"]}
    ]
    assert listed[0]["last_used_at"] is not None  # the 403 above was a use

    for expected in (204, 204):
        async with admin.delete(f"/v1/keys/{made['id']}") as response:
            assert response.status == expected
    async with admin.post("/v1/keys", json={"name": "0badf00d", "scope": "read"}) as response:
        assert response.status == 201
    for unknown in ("00000000", "sender", "0badf00d"):  # an id, never a name
        async with admin.delete(f"/v1/keys/{unknown}") as response:
            assert response.status == 404
    async with sender.get("/v1/limits") as response:
        assert response.status == 401


# -- every /v1 route -----------------------------------------------------------------------------


def v1_routes() -> list[tuple[str, str, Scope | None]]:
    """(method, path template, declared scope) of every /v1 route of the app, HEAD aside."""
    app = bare_app()
    return [
        (route.method, route.resource.canonical, scope_of(route.handler))
        for route in app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/v1/")
        and route.method != "HEAD"
    ]


def test_every_v1_route_declares_a_scope_except_the_signed_ones() -> None:
    """Routes under SIGNED_PREFIXES declare no scope; every other /v1 route declares one."""
    routes = v1_routes()
    assert len(routes) > 20
    for method, path, scope in routes:
        assert (scope is None) == path.startswith(SIGNED_PREFIXES), (method, path)


def test_the_scope_table_of_http_api_md_is_the_code_s() -> None:
    """docs/http-api.md lists every bearer /v1 route once with the scope its handler declares."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "http-api.md").read_text()
    documented = re.findall(r"^\| `(\w+) (/v1/\S+)` \| `(read|send|admin)` \|$", text, re.M)
    declared = [(m, p, s.value) for m, p, s in v1_routes() if s is not None]
    assert sorted(documented) == sorted(declared)


async def test_every_v1_route_refuses_a_missing_wrong_or_revoked_key_and_a_scope_too_small(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """Each bearer /v1 route answers 401 without a key, with an unknown or revoked one, 403 to a key below its scope, and neither to a key of its scope."""
    admin = open_client(http_gateway)
    keys: dict[str, str] = {}
    for name in ("read", "send", "admin", "revoked"):
        scope = "admin" if name == "revoked" else name
        async with admin.post("/v1/keys", json={"name": name, "scope": scope}) as response:
            made = await response.json()
        keys[name] = made["key"]
        if name == "revoked":
            async with admin.delete(f"/v1/keys/{made['id']}") as response:
                assert response.status == 204
    refused = {None: 401, UNKNOWN_KEY: 401, "not-a-key": 401, keys["revoked"]: 401}
    client = open_client(http_gateway, token=None)
    walked = 0
    for method, template, needed in v1_routes():
        if needed is None:
            continue
        path = re.sub(r"\{[^}]+\}", "x", template)
        expected = dict(refused)
        for scope in Scope:
            expected[keys[scope.value]] = 403 if not scope.allows(needed) else 0
        for token, status in expected.items():
            headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
            async with client.request(method, path, headers=headers) as response:
                where = (method, template, token and token[:12], response.status)
                if status == 0:
                    assert response.status not in (401, 403), where
                    continue
                assert response.status == status, where
                error = await error_of(response)
                assert error["code"] == ("unauthorized" if status == 401 else "forbidden"), where
        walked += 1
    assert walked > 20  # the walk really happened
