"""The benchmark's attribution of a paced phase's seconds to the machine's load and to database
maintenance (``bench/stats.py``), which `bench/README.md` reads the latency target with."""

from __future__ import annotations

from bench.stats import latency_by_load, windows

START = 1_764_880_000.0


def _window(second: int, p99_ms: float, count: int = 1000) -> dict:
    return {"from_s": float(second), "count": count, "p50_ms": p99_ms / 2, "p99_ms": p99_ms,
            "max_ms": p99_ms}


def test_each_second_is_put_beside_the_load_and_maintenance_of_that_second() -> None:
    seconds = [_window(0, 30.0), _window(1, 45.0), _window(2, 240.0), _window(3, 60.0),
               _window(4, 900.0), _window(5, 20.0, count=3), _window(6, 40.0)]
    busy = [(START + 0.5, 78.0), (START + 1.0, 82.0), (START + 1.5, 84.0),  # second 1: 83 %
            (START + 2.5, 86.0), (START + 3.5, 91.0), (START + 4.2, 95.0), (START + 4.7, 97.0),
            (START + 5.5, 70.0)]  # nothing for second 6: left out
    maintenance = [(START + 2.1, 'ANALYZE (SKIP_LOCKED) "messages"'),
                   (START + 2.3, 'ANALYZE (SKIP_LOCKED) "messages"'),
                   (START + 4.9, "autovacuum: VACUUM public.message_events")]

    found = latency_by_load(seconds, busy, maintenance, START, limit_ms=50.0)

    assert [(s["from_s"], s["machine_busy_percent"]) for s in found["seconds"]] == [
        (0, 78.0), (1, 83.0), (2, 86.0), (3, 91.0), (4, 96.0)
    ]  # second 5 had 3 sends, second 6 no load sample
    assert found["seconds"][2]["maintenance"] == ['ANALYZE (SKIP_LOCKED) "messages"']
    assert [(b["busy_from"], b["busy_to"], b["seconds"], b["within_limit"])
            for b in found["by_machine_busy"]] == [
        (0.0, 80.0, 1, 1), (80.0, 84.0, 1, 1), (84.0, 88.0, 1, 0), (88.0, 92.0, 1, 0),
        (92.0, None, 1, 0),
    ]
    assert found["with_maintenance"] == {"seconds": 2, "within_limit": 0,
                                         "median_p99_ms": 240.0, "worst_p99_ms": 900.0}
    assert found["without_maintenance"]["seconds"] == 3
    assert found["without_maintenance"]["within_limit"] == 2


def test_it_reads_the_benchmarks_own_one_second_windows() -> None:
    # 100 sends in each of two seconds: latencies 1..100 ms, then 101..200 ms.
    t0s = [START + 0.01 * i for i in range(200)]
    lats = [(i + 1) / 1000 for i in range(200)]
    one_second = windows(t0s, lats, START, 1.0)
    found = latency_by_load(one_second, [(START + 0.5, 50.0), (START + 1.5, 90.0)], [], START,
                            limit_ms=100.0)
    assert [(s["from_s"], s["p99_ms"], s["machine_busy_percent"]) for s in found["seconds"]] == [
        (0, 99.0, 50.0), (1, 199.0, 90.0)
    ]
    assert [b["within_limit"] for b in found["by_machine_busy"]] == [1, 0]
    assert found["with_maintenance"]["seconds"] == 0
