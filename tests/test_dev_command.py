"""``gateway dev`` as a newcomer runs it: one process, nothing else installed."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import aiohttp


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_dev_mode_sends_to_the_outbox(tmp_path: Path) -> None:
    """A job POSTed to `gateway dev` shows up rendered on /dev/outbox, then SIGTERM stops it."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(GATEWAY_DEV_DATA_DIR=str(tmp_path / "dev"), GATEWAY_HTTP_PORT=str(port))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "dev", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": "Bearer dev-token-not-for-production"}
    job = {
        "id": "hello-1", "channel": "email", "to": {"address": "jane@example.com"},
        "content": {"subject": "Hello {{ name }}", "text": "Hi {{ name }}!"},
        "data": {"name": "Jane"},
    }
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                try:
                    async with http.get(f"{base}/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            async with http.post(f"{base}/v1/messages", json=job, headers=headers) as response:
                assert response.status == 202, await response.text()
            for _ in range(100):
                async with http.get(f"{base}/dev/outbox.json") as response:
                    records = await response.json()
                if records:
                    break
                await asyncio.sleep(0.05)
            async with http.get(f"{base}/dev/outbox") as response:
                page = await response.text()
        assert records[0]["subject"] == "Hello Jane" and records[0]["text"] == "Hi Jane!"
        assert "Hello Jane" in page
        assert (tmp_path / "dev" / "outbox.jsonl").read_text().count("hello-1") == 1
    finally:
        process.terminate()
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert b"gateway dev is running" in stderr
