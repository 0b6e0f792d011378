"""A gateway worker for diagnostics (``--heap-report``, ``--gc-threshold``): exactly
``gateway serve --consumer-only``, plus a SIGUSR1 handler that writes which object types are
most numerous (count and shallow size, from the garbage collector's view) and, when
``BENCH_TRACEMALLOC=1``, where the Python heap was allocated (by file, line, traceback), to the
file named by ``BENCH_TRACEMALLOC_OUT``. SIGUSR2 stops tracemalloc (it slows the process a lot
and adds its own memory: use it for shares, not for the RSS figure). ``BENCH_GC_THRESHOLD``
(``gc.set_threshold`` arguments, e.g. ``50000,20,100``) and ``BENCH_GC_FREEZE=1`` try a tuned
garbage collector without changing the gateway.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import tracemalloc
from collections import Counter
from typing import Any


def _objects() -> list[str]:
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for obj in gc.get_objects():
        kind = type(obj)
        name = f"{getattr(kind, '__module__', '?')}.{getattr(kind, '__qualname__', kind)}"
        counts[name] += 1
        try:
            sizes[name] += sys.getsizeof(obj)
        except TypeError:
            pass
    lines = [f"--- gc-tracked objects: {sum(counts.values())}, shallow size "
             f"{sum(sizes.values()) / 2**20:.1f} MiB (top 40 types by size) ---"]
    for name, size in sizes.most_common(40):
        lines.append(f"{size / 2**20:8.2f} MiB {counts[name]:9d}  {name}")
    return lines


def _dump(_signum: int, _frame: Any) -> None:
    out = os.environ.get("BENCH_TRACEMALLOC_OUT", "tracemalloc.txt")
    lines = _objects()
    if tracemalloc.is_tracing():
        lines += [""] + _traces()
    with open(out, "w") as handle:
        handle.write("\n".join(lines) + "\n")


def _traces() -> list[str]:
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )
    lines: list[str] = []
    by_file = snapshot.statistics("filename")
    total = sum(s.size for s in by_file)
    lines.append(f"traced Python heap: {total / 2**20:.1f} MiB in "
                 f"{sum(s.count for s in by_file)} blocks")
    for title, key, top in (("by file", "filename", 25), ("by line", "lineno", 40)):
        lines.append(f"\n--- {title} ---")
        for stat in snapshot.statistics(key)[:top]:
            frame = stat.traceback[0]
            where = frame.filename.split("site-packages/")[-1].split("/work/main/")[-1]
            lines.append(f"{stat.size / 2**20:8.2f} MiB {stat.count:9d} blocks  {where}"
                         + (f":{frame.lineno}" if key == "lineno" else ""))
    lines.append("\n--- by traceback (top 12, innermost last) ---")
    for stat in snapshot.statistics("traceback")[:12]:
        lines.append(f"{stat.size / 2**20:8.2f} MiB {stat.count:9d} blocks")
        for frame in stat.traceback.format()[-12:]:
            lines.append("    " + frame.strip().split("site-packages/")[-1])
    return lines


def main() -> None:
    threshold = os.environ.get("BENCH_GC_THRESHOLD")
    freeze = os.environ.get("BENCH_GC_FREEZE") == "1"
    if os.environ.get("BENCH_TRACEMALLOC") == "1":
        tracemalloc.start(int(os.environ.get("BENCH_TRACEMALLOC_FRAMES", "12")))
    signal.signal(signal.SIGUSR1, _dump)
    signal.signal(signal.SIGUSR2, lambda *_: tracemalloc.stop())
    import gateway.cli

    if threshold or freeze:
        # What-if: these collector settings instead of the gateway's own (gateway.cli._tune_gc,
        # which `gateway serve` calls once started), the gateway otherwise unchanged.
        def what_if() -> None:
            gc.collect()
            if freeze:
                gc.freeze()  # everything made so far is never scanned again
            if threshold:
                gc.set_threshold(*(int(x) for x in threshold.split(",")))

        gateway.cli._tune_gc = what_if  # type: ignore[attr-defined]
    raise SystemExit(gateway.cli.main(["serve", "--consumer-only"]))


if __name__ == "__main__":
    sys.exit(main())
