"""Everything the benchmark brings up and tears down: its database, its RabbitMQ virtual host,
child processes (which die with their parent: PR_SET_PDEATHSIG), and stale leftovers of runs
that were killed outright (``kill -9``): databases and vhosts named after a pid that is gone.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import re
import signal
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
PREFIX_DB = "gw_bench_"
PREFIX_VHOST = "gw-bench-"
_NAME = re.compile(r"^gw[_-]bench[_-](\d+)[_-][0-9a-f]+$")


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child before exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def with_database(url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


def host_port(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 5432


def with_vhost(url: str, vhost: str) -> str:
    return url.rstrip("/") + "/" + urllib.parse.quote(vhost, safe="")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    done = subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, text=True,
                          timeout=timeout)
    return done.stdout


async def rabbitmqctl_async(*args: str, timeout: float = 60) -> str:
    return await asyncio.to_thread(rabbitmqctl, *args, timeout=timeout)


async def drop_stale(admin: asyncpg.Connection, log: Any) -> None:
    """Drop databases and vhosts left by benchmark runs whose process no longer exists."""
    for row in await admin.fetch("SELECT datname FROM pg_database WHERE datname LIKE 'gw_bench_%'"):
        match = _NAME.match(row["datname"])
        if match and not _pid_alive(int(match.group(1))):
            log(f"dropping stale database {row['datname']}")
            await admin.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
    import shutil
    import tempfile

    for path in Path(tempfile.gettempdir()).glob("gw-bench-*-*"):  # logs and keys of dead runs
        pid = path.name.split("-")[2]
        if pid.isdigit() and not _pid_alive(int(pid)) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
    try:
        vhosts = await rabbitmqctl_async("list_vhosts", "--quiet", "--no-table-headers")
    except (OSError, subprocess.SubprocessError):
        return
    for vhost in vhosts.split():
        match = _NAME.match(vhost)
        if match and not _pid_alive(int(match.group(1))):
            log(f"deleting stale vhost {vhost}")
            try:
                await rabbitmqctl_async("delete_vhost", vhost)
            except (OSError, subprocess.SubprocessError):
                pass


@dataclass
class Child:
    """A child process with its log file."""

    name: str
    process: asyncio.subprocess.Process
    log_path: Path | None
    log_file: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    async def stop(self, grace: float = 15.0) -> int | None:
        if self.process.returncode is None:
            try:
                self.process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                await asyncio.wait_for(self.process.wait(), timeout=grace)
            except TimeoutError:
                try:
                    self.process.kill()
                except ProcessLookupError:
                    pass
                await self.process.wait()
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None
        return self.process.returncode


@dataclass
class Children:
    items: list[Child] = field(default_factory=list)

    async def spawn(
        self, name: str, argv: list[str], *, env: dict[str, str] | None = None,
        log_path: Path | None = None, stdout_pipe: bool = False,
    ) -> Child:
        log_file = open(log_path, "ab") if log_path is not None else None
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            cwd=str(ROOT),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else (log_file or subprocess.DEVNULL),
            stderr=log_file or subprocess.DEVNULL,
            preexec_fn=_set_pdeathsig,
            # Own session: a Ctrl-C reaches only the benchmark, which stops its children in
            # order; if the benchmark itself is killed, PR_SET_PDEATHSIG stops them.
            start_new_session=True,
        )
        child = Child(name, process, log_path, log_file)
        self.items.append(child)
        return child

    async def stop(self, child: Child, grace: float = 15.0) -> int | None:
        code = await child.stop(grace)
        if child in self.items:
            self.items.remove(child)
        return code

    async def stop_all(self, grace: float = 15.0) -> None:
        items, self.items = list(self.items), []
        await asyncio.gather(*(c.stop(grace) for c in reversed(items)), return_exceptions=True)


async def read_json_line(child: Child, timeout: float) -> dict[str, Any]:
    import orjson

    assert child.process.stdout is not None
    line = await asyncio.wait_for(child.process.stdout.readline(), timeout=timeout)
    if not line:
        raise RuntimeError(f"{child.name} exited before it was ready:\n{child.tail()}")
    return orjson.loads(line)


def python() -> str:
    return sys.executable
