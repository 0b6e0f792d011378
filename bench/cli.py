"""The command line of the benchmark (``python -m bench``, ``make bench``): its options, and
the run around a ``Bench``: signals and the ``--max-seconds`` watchdog, the results file, the
summary table and the exit status (0 correct, 3 a check failed, 2 not done, 130 interrupted).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path

import asyncpg
import orjson

from bench import infra, report, run
from bench.common import PG_ADMIN_URL, RESULTS, log
from bench.run import Bench, BenchFailed


def _fractions(text: str) -> list[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values or any(not 0 < v <= 1.5 for v in values):
        raise argparse.ArgumentTypeError("fractions of the maximum, each in (0, 1.5]")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=run.__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["all", "throughput", "latency", "inflight", "curve"],
                   default="throughput")
    p.add_argument("--jobs", "-n", type=int, default=50_000, help="jobs in the throughput phase")
    p.add_argument("--workers", type=int, default=1,
                   help="gateway processes (separate `gateway serve --consumer-only`)")
    p.add_argument("--serve-workers", action="store_true",
                   help="with --workers N: one `gateway serve --consumer-only --workers N` "
                        "(the gateway's own flag) instead of N separate processes")
    p.add_argument("--skip-raw", action="store_true", help="throughput without the raw ceiling")
    p.add_argument("--bind-events", action="store_true",
                   help="bind a queue to gateway.events (default: none, as the gateway ships)")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--daily-cap", type=int, default=3)
    p.add_argument("--transactional-share", type=float, default=0.4)
    p.add_argument("--prefetch", type=int, default=400, help="GATEWAY_PREFETCH (gateway default)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--batch-wait-ms", type=int, default=5)
    p.add_argument("--smtp-pool-size", type=int, default=16, help="GATEWAY_SMTP_POOL_SIZE (gateway default)")
    p.add_argument("--sms-concurrency", type=int, default=50)
    p.add_argument("--sms-delay-ms", default="0-5", help="SMS fake delay, uniform lo-hi ms")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.add_argument("--rate", type=float, default=None, help="latency: offered jobs/s")
    p.add_argument("--rate-fraction", type=float, default=0.8)
    p.add_argument("--pace-tick-ms", type=float, default=2.0,
                   help="latency: the paced publisher's shortest sleep between two turns "
                        "(each turn publishes the jobs due by then)")
    p.add_argument("--duration", type=float, default=60.0, help="latency: seconds")
    p.add_argument("--raw-floor", action=argparse.BooleanOptionalAction, default=True,
                   help="latency: then the bare consumer at the same offered rate, for the "
                        "publish -> consume latency and CPU of the broker alone on this box")
    p.add_argument("--raw-floor-duration", type=float, default=30.0,
                   help="--raw-floor: seconds")
    p.add_argument("--curve", type=_fractions, default=[0.2, 0.4, 0.6, 0.8],
                   help="curve: fractions of the maximum to hold, comma-separated")
    p.add_argument("--curve-duration", type=float, default=20.0,
                   help="curve: seconds at each rate")
    p.add_argument("--inflight", type=int, default=10_000, help="inflight: jobs per process")
    p.add_argument("--inflight-sms-delay-ms", type=int, default=30_000,
                   help="inflight: the SMS fake holds each request this long (or until the "
                        "benchmark releases it once the pile-up was measured)")
    p.add_argument("--gc-threshold", default="",
                   help="what-if: the workers use gc.set_threshold(these), e.g. "
                        "50000,20,100, instead of the gateway's own collector settings")
    p.add_argument("--gc-freeze", action="store_true",
                   help="what-if: the workers freeze the collector once started (with or "
                        "without --gc-threshold; without either, the gateway's own settings)")
    p.add_argument("--heap-report", action="store_true",
                   help="diagnostic: inflight: worker 0 reports its objects by type at the peak")
    p.add_argument("--tracemalloc", action="store_true",
                   help="diagnostic: --heap-report plus tracemalloc (slow: shares, not RSS)")
    p.add_argument("--profile", action="store_true", help="py-spy the first worker (throughput)")
    p.add_argument("--profile-rate", type=int, default=100)
    p.add_argument("--profile-phase", choices=["throughput", "inflight", "latency"],
                   default="throughput")
    p.add_argument("--profile-native", action="store_true")
    p.add_argument("--inline", action="store_true",
                   help="jobs carry their content inline instead of naming the channel's "
                        "stored template (same texts)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--pg-proxy", action="store_true",
                   help="diagnostic: count the workers' PostgreSQL round trips per statement")
    p.add_argument("--keep", action="store_true", help="keep database, vhost and logs (debug)")
    p.add_argument("--wait-quiet", type=float, default=0.0,
                   help="wait up to this many seconds before each phase for other load to stop")
    p.add_argument("--max-seconds", type=float, default=600.0, help="hard limit for the run")
    p.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    return p.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    interrupted: list[str] = []

    def interrupt(name: str) -> None:
        if not interrupted:
            log(f"{name}: stopping and cleaning up")
            interrupted.append(name)
            main_task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt, sig.name)
    watchdog = loop.call_later(args.max_seconds, interrupt, f"--max-seconds {args.max_seconds:.0f}")
    bench = Bench(args)
    status = 1
    try:
        results = await bench.run()
        results["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        results["machine"].update(await _versions(bench))
        for name in results.get("phases", {}):
            results.get("earlier_phases", {}).pop(name, None)
        results["targets"] = report.targets(results)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2,
                                             default=str))
        sys.stdout.write(report.table(results) + "\n")
        shown = args.output.relative_to(infra.ROOT) if args.output.is_relative_to(infra.ROOT) \
            else args.output
        log(f"wrote {shown}")
        status = 0 if report.correct(results) else 3
    except asyncio.CancelledError:
        log("interrupted")
        status = 130
    except BenchFailed as exc:
        log(f"FAILED: {exc}")
        status = 2
    except Exception:
        import traceback

        log("FAILED with an exception:\n" + traceback.format_exc())
        for child in bench.children.items:
            if child.name.startswith("worker"):
                log(f"{child.name} log tail:\n{child.tail()}")
        status = 2
    finally:
        watchdog.cancel()
        try:
            await asyncio.shield(asyncio.wait_for(bench.teardown(), timeout=90))
        except Exception as exc:
            log(f"cleanup problem: {exc}")
    return status


async def _versions(bench: Bench) -> dict[str, str]:
    out = {}
    try:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        out["postgresql"] = await conn.fetchval("SHOW server_version")
        out["synchronous_commit"] = await conn.fetchval("SHOW synchronous_commit")
        await conn.close()
    except Exception:
        pass
    try:
        props = bench.amqp.transport.connection.server_properties  # type: ignore[union-attr]
        version = props.get("version")
        out["rabbitmq"] = version.decode() if isinstance(version, bytes) else str(version or "")
    except Exception:
        pass
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import uvloop

    return uvloop.run(amain(args))
