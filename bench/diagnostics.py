"""Diagnostics, not part of the headline figures: the heap report of a traced worker at the
in-flight peak (``--heap-report``, ``--tracemalloc``) and py-spy on the first worker
(``--profile``), both written under bench/results.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench import infra
from bench.common import RESULTS, log


async def dump_heap(worker: infra.Child, *, tmp: Path) -> None:
    """SIGUSR1 to the traced worker; copy its tracemalloc report into bench/results."""
    out = tmp / "tracemalloc.txt"
    out.unlink(missing_ok=True)
    worker.process.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 120
    size = -1
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        if out.exists() and out.stat().st_size == size and size > 0:
            break
        size = out.stat().st_size if out.exists() else -1
    worker.process.send_signal(signal.SIGUSR2)  # tracemalloc off: let the drain run
    if out.exists():
        shutil.copy(out, RESULTS / "inflight-memory.txt")
        log("heap report -> bench/results/inflight-memory.txt")
    else:
        log("heap report: the worker wrote none")


# --- profiler ----------------------------------------------------------------------------------


async def start_profiler(
    worker: infra.Child, *, children: infra.Children, tmp: Path, args: argparse.Namespace,
) -> infra.Child | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        log("--profile: py-spy not found (pip install py-spy into .venv); not profiling")
        return None
    raw = RESULTS / profile_name("txt", args.profile_phase)
    child = await children.spawn(
        "py-spy",
        [spy, "record", "--pid", str(worker.pid), "--rate", str(args.profile_rate),
         "--format", "raw", "--output", str(raw), "--duration", "600", "--gil",
         *(["--native"] if args.profile_native else [])],
        log_path=tmp / "py-spy.log",
    )
    await asyncio.sleep(1.0)
    if child.process.returncode is not None:
        log(f"py-spy failed to start:\n{child.tail()}")
        return None
    log(f"profiling {worker.name} (pid {worker.pid}) with py-spy at "
        f"{args.profile_rate} Hz, --gil (samples of the thread holding the GIL: "
        f"Python CPU, not waits) -> {raw}")
    return child


async def stop_profiler(
    spy: infra.Child, *, children: infra.Children, args: argparse.Namespace,
    results: dict[str, Any],
) -> None:
    if spy.process.returncode is None:
        spy.process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(spy.process.wait(), timeout=20)
        except TimeoutError:
            log("py-spy did not stop on SIGINT")
    await children.stop(spy)
    raw = RESULTS / profile_name("txt", args.profile_phase)
    if raw.exists():
        from bench import hotspots

        summary = hotspots.summarise(raw.read_text())
        svg = RESULTS / profile_name("svg", args.profile_phase)
        text = RESULTS / profile_name("hot", args.profile_phase)
        hotspots.write_svg(raw.read_text(), svg,
                           title=f"gateway worker, {args.profile_phase} phase (py-spy "
                                 f"--gil{' --native' if args.profile_native else ''})")
        text.write_text(hotspots.format_summary(summary))
        results["profile"] = {"phase": args.profile_phase, **summary}
        log(f"profile: {summary['samples']} samples -> bench/results/{svg.name}, {text.name}")


def profile_name(kind: str, phase: str) -> str:
    base = "profile" if phase == "throughput" else f"profile-{phase}"
    return {"txt": f"{base}.txt", "svg": f"{base}.svg", "hot": f"{base}-hotspots.txt"}[kind]
