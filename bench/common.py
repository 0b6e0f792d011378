"""What the benchmark's modules share: the PostgreSQL and RabbitMQ servers it uses
(``BENCH_PG_URL``, ``BENCH_AMQP_URL``), where its results go, and its log line (stderr).
"""

from __future__ import annotations

import os
import sys
from datetime import datetime

from bench import infra

PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
RESULTS = infra.ROOT / "bench" / "results"

# The latency target: p99 at 80 % of the measured maximum.
P99_TARGET_MS = 50.0


def log(text: str) -> None:
    stamp = datetime.now().strftime("%H:%M:%S")
    sys.stderr.write(f"[bench {stamp}] {text}\n")
    sys.stderr.flush()
