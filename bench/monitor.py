"""Sample the gateway processes' RSS (psutil, every ``interval`` s) and account CPU per role.

CPU is read at the start and at the end of a phase for each role (gateway workers, fake
providers, the benchmark itself, PostgreSQL's processes, RabbitMQ's ``beam.smp``), plus the whole
machine, so the report can say who used the two cores; and so are the context switches of every
thread of each role and of the machine.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import psutil

MB = 1024 * 1024


def _cpu_seconds(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
        return t.user + t.system
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0


def _switches(proc: psutil.Process) -> tuple[int, int]:
    """Voluntary and involuntary context switches of every thread of ``proc`` so far.

    psutil's ``num_ctx_switches`` reads ``/proc/PID/status``, the main thread's alone, which
    for RabbitMQ's ``beam.smp`` (its schedulers are other threads) is nearly nothing.
    """
    voluntary = involuntary = 0
    try:
        tasks = os.listdir(f"/proc/{proc.pid}/task")
    except OSError:
        return 0, 0
    for tid in tasks:
        try:
            with open(f"/proc/{proc.pid}/task/{tid}/status") as status:
                for line in status:
                    if line.startswith("voluntary_ctxt_switches:"):
                        voluntary += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        involuntary += int(line.split()[1])
        except OSError:  # the thread ended meanwhile
            continue
    return voluntary, involuntary


def _by_name(names: tuple[str, ...]) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] in names:
            found.append(proc)
    return found


@dataclass
class CpuAccount:
    """CPU seconds per role between ``start()`` and ``stop()``."""

    roles: dict[str, Callable[[], list[psutil.Process]]]
    _start: dict[str, dict[int, float]] = field(default_factory=dict)
    _procs: dict[str, list[psutil.Process]] = field(default_factory=dict)
    _wall: float = 0.0
    _machine: Any = None
    _last: dict[str, dict[int, float]] = field(default_factory=dict)
    _switches_start: dict[str, dict[int, tuple[int, int]]] = field(default_factory=dict)
    _switches_last: dict[str, dict[int, tuple[int, int]]] = field(default_factory=dict)
    _machine_switches: int = 0
    _task: asyncio.Task[None] | None = None
    # (time.time(), busy and total CPU seconds of the machine) at each poll, for the timeline.
    _machine_polls: list[tuple[float, float, float]] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)

    def poll(self) -> None:
        """Remember each process's CPU so far: one that exits before ``stop`` still counts."""
        for role, find in self.roles.items():
            last = self._last.setdefault(role, {})
            start = self._start.setdefault(role, {})
            switches = self._switches_last.setdefault(role, {})
            for proc in find():
                if proc.pid not in start:
                    start[proc.pid] = 0.0  # born during the phase: counts from zero
                    self._switches_start.setdefault(role, {})[proc.pid] = (0, 0)
                    self._procs.setdefault(role, []).append(proc)
                last[proc.pid] = _cpu_seconds(proc) or last.get(proc.pid, 0.0)
                now = _switches(proc)
                switches[proc.pid] = now if sum(now) else switches.get(proc.pid, (0, 0))

    def _poll_machine(self) -> None:
        times = psutil.cpu_times()
        # guest time is counted in user time already
        total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
        self._machine_polls.append((time.time(), _busy(times), total))

    async def _poll_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.poll()
            self._poll_machine()

    def start(self) -> None:
        self._wall = time.monotonic()
        self._machine = psutil.cpu_times()
        for role, find in self.roles.items():
            procs = find()
            self._procs[role] = procs
            self._start[role] = {p.pid: _cpu_seconds(p) for p in procs}
            self._switches_start[role] = {p.pid: _switches(p) for p in procs}
        self._machine_switches = psutil.cpu_stats().ctx_switches
        self._machine_polls = []
        self._poll_machine()
        self._task = asyncio.create_task(self._poll_loop(0.5))

    def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
        self.poll()
        wall = max(time.monotonic() - self._wall, 1e-9)
        end = psutil.cpu_times()
        cores = psutil.cpu_count() or 1
        machine_busy = _busy(end) - _busy(self._machine)
        out: dict[str, Any] = {
            "wall_seconds": round(wall, 2),
            "machine_busy_percent": round(100 * machine_busy / (wall * cores), 1),
            "cores": cores,
            # Every process's, the kernel's threads' included: on a VM each switch costs tens
            # of microseconds of CPU, so this is where steady arrivals cost more than a burst.
            "machine_context_switches_per_s": round(
                (psutil.cpu_stats().ctx_switches - self._machine_switches) / wall
            ),
            "roles": {},
            # [time.time(), % of the machine busy since the poll before], every 0.5 s.
            "machine_busy_timeline": [
                [round(t1, 2), round(100 * (b1 - b0) / (n1 - n0), 1)]
                for (_, b0, n0), (t1, b1, n1) in zip(self._machine_polls, self._machine_polls[1:])
                if n1 > n0
            ],
        }
        for role in self.roles:
            # Processes born meanwhile (new PostgreSQL backends) count from zero; those that
            # died count up to their last poll.
            last = self._last.get(role, {})
            seconds = sum(max(0.0, last.get(pid, begin) - begin)
                          for pid, begin in self._start.get(role, {}).items())
            begun = self._switches_start.get(role, {})
            ended = self._switches_last.get(role, {})
            voluntary = involuntary = 0
            for pid, (v0, i0) in begun.items():
                v1, i1 = ended.get(pid, (v0, i0))
                voluntary += max(0, v1 - v0)
                involuntary += max(0, i1 - i0)
            out["roles"][role] = {
                "cpu_seconds": round(seconds, 2),
                "percent_of_one_core": round(100 * seconds / wall, 1),
                "context_switches": {"voluntary": voluntary, "involuntary": involuntary},
            }
        self.result = out
        return out


def _busy(times: Any) -> float:
    """CPU seconds the machine spent on anything but idling and waiting for I/O."""
    return times.user + times.nice + times.system + times.irq + times.softirq + times.steal


def postgres_processes(database: str | None = None) -> list[psutil.Process]:
    """PostgreSQL's processes: the shared ones (writer, WAL, checkpointer...) and, when
    ``database`` is given, only the backends of that database (not other users' test runs)."""
    found = []
    for proc in _by_name(("postgres",)):
        if database is None:
            found.append(proc)
            continue
        try:
            title = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        is_backend = "127.0.0.1(" in title or "[local]" in title or "::1(" in title
        if not is_backend or f" {database} " in title:
            found.append(proc)
    return found


def cpu_gauge_ms(loops: int = 2_000_000) -> float:
    """This thread's CPU time for a fixed pure-Python loop, in ms: how fast the machine runs our
    kind of code right now (lower is faster). On a virtual machine it moves with the host's
    load, which the guest cannot see as busy processes of its own."""
    start = time.thread_time()
    total = 0
    for i in range(loops):
        total += i
    return round((time.thread_time() - start) * 1000, 1)


def background_load(seconds: float = 1.0, exclude: set[int] | None = None) -> dict[str, Any]:
    """How busy the machine is with nothing of ours running, who is busy, and the CPU gauge
    (:func:`cpu_gauge_ms`, taken after the load was read)."""
    procs = {p.pid: p for p in psutil.process_iter(["name", "cmdline"])}
    for p in procs.values():
        try:
            p.cpu_percent(None)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    busy = psutil.cpu_percent(interval=seconds)
    top = []
    for pid, p in procs.items():
        if exclude and pid in exclude:
            continue
        try:
            pct = p.cpu_percent(None)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if pct >= 5:
            cmd = " ".join(p.info.get("cmdline") or [p.info.get("name") or "?"])[:80]
            top.append((pct, cmd))
    top.sort(reverse=True)
    return {"machine_busy_percent": busy, "busy_processes": [f"{c:.0f}% {n}" for c, n in top[:5]],
            "cpu_gauge_ms": cpu_gauge_ms()}


def rabbitmq_processes() -> list[psutil.Process]:
    return _by_name(("beam.smp", "erl_child_setup", "epmd"))


class RssSampler:
    """Peak and series of RSS per pid, sampled every ``interval`` seconds until stopped."""

    def __init__(self, pids: dict[str, int], interval: float = 0.1,
                 extra: Callable[[], dict[str, float]] | None = None) -> None:
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._interval = interval
        self.peak: dict[str, int] = {name: 0 for name in pids}
        self.series: list[tuple[float, dict[str, int]]] = []
        self._task: asyncio.Task[None] | None = None
        self._t0 = 0.0

    async def _run(self) -> None:
        while True:
            sample: dict[str, int] = {}
            for name, proc in self._procs.items():
                try:
                    rss = proc.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                sample[name] = rss
                if rss > self.peak[name]:
                    self.peak[name] = rss
            self.series.append((time.monotonic() - self._t0, sample))
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def peak_mb(self) -> dict[str, float]:
        return {name: round(value / MB, 1) for name, value in self.peak.items()}

    def current_mb(self) -> dict[str, float]:
        if not self.series:
            return {}
        return {name: round(v / MB, 1) for name, v in self.series[-1][1].items()}


def self_process() -> list[psutil.Process]:
    return [psutil.Process(os.getpid())]
