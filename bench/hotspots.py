"""Read py-spy's raw (collapsed) stacks: top hotspots by self and inclusive samples, per
package, and a small self-contained SVG flame graph.

``python -m bench.hotspots bench/results/profile.txt`` prints the summary again.
"""

from __future__ import annotations

import html
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

PACKAGES = [
    ("gateway/", "gateway"), ("adapters/", "adapters"), ("aio_pika/", "aio-pika"),
    ("aiormq/", "aiormq"), ("pamqp/", "pamqp"), ("asyncpg/", "asyncpg"),
    ("aiohttp/", "aiohttp"), ("yarl/", "aiohttp"), ("multidict/", "aiohttp"),
    ("pydantic", "pydantic"), ("jinja2/", "jinja2"), ("markupsafe/", "jinja2"),
    ("structlog/", "structlog"), ("phonenumbers/", "phonenumbers"), ("httpx/", "httpx/h2"),
    ("httpcore/", "httpx/h2"), ("h2/", "httpx/h2"), ("hpack/", "httpx/h2"),
    ("hyperframe/", "httpx/h2"), ("aiosmtplib/", "aiosmtplib"), ("email/", "email (stdlib)"),
    ("zoneinfo/", "zoneinfo/datetime"), ("orjson", "orjson"), ("uvloop", "event loop"),
    ("asyncio/", "event loop"), ("cryptography/", "cryptography"),
]


# Each sample goes to the first stage whose marker is in its stack (order matters).
STAGES = [
    ("email: build_mime (adapters/mime.py)", ["build_mime ("]),
    ("email: SMTP dialogue (adapters/smtp_client.py)",
     ["_transmit (", "smtp_client.py", "aiosmtplib/"]),
    ("events: publishing (publish_events, aio-pika Exchange.publish, aiormq basic_publish)",
     ["publish_events (", "Exchange.publish ("]),
    ("events: unroutable events returned by the broker (basic.return)", ["_on_return_frame"]),
    ("acks: delivery.ack", ["AmqpDelivery.ack", "IncomingMessage.ack"]),
    ("SMS: TwilioSender.send (adapters/http11.py)", ["TwilioSender.send"]),
    ("push: ApnsSender.send (h2client, h2)", ["ApnsSender.send", "GuardedSender.send"]),
    ("DB: claim / grant_caps / record (asyncpg)",
     ["Store.claim", "Store.grant_caps", "Store.record", "asyncpg/"]),
    ("decide (policy, quiet hours)", ["decide (gateway/decide.py"]),
    ("prepare (render, normalise)", ["prepare (gateway/prepare.py", "Renderer.render"]),
    ("parse (pydantic)", ["Pipeline._parse", "parse_job ("]),
    ("AMQP reader task (frames in: deliveries, confirms)",
     ["Connection.__reader", "Channel._reader", "FrameReceiver"]),
    ("AMQP writer task (frames out)", ["Connection.__writer"]),
    ("AMQP delivery -> intake (consumer task, buffering)",
     ["JobConsumer._on_message", "aio_pika/queue.py", "consumer (", "_on_delivery", "aio_pika/"]),
    ("pipeline/dispatch bookkeeping (own code of process, dispatch, outcomes)",
     ["gateway/", "adapters/"]),
    ("AMQP other (aiormq, pamqp)", ["aiormq/", "pamqp/"]),
]


def parse(text: str) -> list[tuple[list[str], int]]:
    stacks = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        stacks.append((stack.split(";"), n))
    return stacks


def _short(frame: str) -> tuple[str, str]:
    """(function, file:line) of a frame, with site-packages paths shortened."""
    match = _FRAME.match(frame)
    if not match:
        return frame, ""
    path = match["file"]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    where = f"{path}:{match['line']}" if match["line"] else path
    return match["func"], where


def package_of(where: str) -> str:
    if "libpython" in where or where.endswith((".h", ".c")) or where.split(":")[0].endswith(
            (".h", ".c")):
        return "CPython runtime (native: gc, refcounts...)"
    if "libc.so" in where:
        return "libc (native: syscalls)"
    if ".so" in where:
        return f"native: {where.split('.so')[0].rsplit('/', 1)[-1]}"
    for prefix, name in PACKAGES:
        if where.startswith(prefix) or f"/{prefix}" in where:
            return name
    if where.startswith("<") or not where:
        return "native/other"
    return "other (stdlib)"


def summarise(text: str, top: int = 25) -> dict[str, Any]:
    stacks = parse(text)
    total = sum(n for _, n in stacks) or 1
    self_line: Counter[str] = Counter()
    self_func: Counter[str] = Counter()
    self_pkg: Counter[str] = Counter()
    incl_func: Counter[str] = Counter()
    incl_own: Counter[str] = Counter()
    for frames, n in stacks:
        func, where = _short(frames[-1])
        self_line[f"{func} ({where})"] += n
        self_func[f"{func} ({where.rsplit(':', 1)[0]})"] += n
        self_pkg[package_of(where)] += n
        seen: set[str] = set()
        for frame in frames:
            f, w = _short(frame)
            key = f"{f} ({w.rsplit(':', 1)[0]})"
            if key not in seen:
                seen.add(key)
                incl_func[key] += n
                if w.startswith(("gateway/", "adapters/")):
                    incl_own[key] += n

    def pct(counter: Counter[str], k: int = top) -> list[dict[str, Any]]:
        return [{"frame": name, "samples": n, "percent": round(100 * n / total, 1)}
                for name, n in counter.most_common(k)]

    # Who is above the hottest native leaves (gc, write, getpid...): the nearest Python frames.
    callers: dict[str, Counter[str]] = {}
    for leaf, _ in Counter({k: v for k, v in self_func.items() if ".py)" not in k}).most_common(4):
        counter: Counter[str] = Counter()
        for frames, n in stacks:
            func, where = _short(frames[-1])
            if f"{func} ({where.rsplit(':', 1)[0]})" != leaf:
                continue
            py = [_short(f) for f in frames if ".py:" in f][-2:][::-1]
            counter[" <- ".join(f"{f} ({w})" for f, w in py)] += n
        callers[leaf] = counter

    stages: Counter[str] = Counter()
    for frames, n in stacks:
        joined = ";".join(frames)
        for stage, markers in STAGES:
            if any(marker in joined for marker in markers):
                stages[stage] += n
                break
        else:
            stages["event loop, runtime, other"] += n

    return {
        "samples": total,
        "by_stage": pct(stages, 20),
        "native_leaf_callers": {
            leaf: [{"frame": k, "samples": v, "percent": round(100 * v / total, 1)}
                   for k, v in counter.most_common(6)]
            for leaf, counter in callers.items()
        },
        "self_by_line": pct(self_line),
        "self_by_function": pct(self_func),
        "self_by_package": pct(self_pkg, 30),
        "inclusive_gateway_functions": pct(incl_own, 30),
        "inclusive_all_functions": pct(incl_func, 30),
    }


def format_summary(summary: dict[str, Any]) -> str:
    out = [f"py-spy samples: {summary['samples']}"]
    titles = {
        "by_stage": "By pipeline stage (inclusive; each sample counted once, first match)",
        "self_by_package": "Self time by package (where the CPU actually was)",
        "self_by_function": "Top functions by self time",
        "self_by_line": "Top lines by self time",
        "inclusive_gateway_functions": "Gateway/adapters functions by inclusive time",
    }
    for key, title in titles.items():
        out.append("")
        out.append(title)
        for row in summary[key]:
            out.append(f"  {row['percent']:5.1f}%  {row['samples']:7d}  {row['frame']}")
    for leaf, rows in summary.get("native_leaf_callers", {}).items():
        out.append("")
        out.append(f"Python callers of the native leaf {leaf}")
        for row in rows:
            out.append(f"  {row['percent']:5.1f}%  {row['samples']:7d}  {row['frame']}")
    return "\n".join(out) + "\n"


# --- a minimal flame graph (icicle: root at the top) -------------------------------------------


def write_svg(text: str, path: Path, *, title: str = "py-spy profile", width: int = 1600) -> None:
    stacks = parse(text)
    total = sum(n for _, n in stacks) or 1
    tree: dict[str, Any] = {"n": 0, "kids": {}}
    for frames, n in stacks:
        node = tree
        node["n"] += n
        for frame in frames:
            node = node["kids"].setdefault(frame, {"n": 0, "kids": {}})
            node["n"] += n
    row_h, rects = 16, []
    depth_max = 0

    def walk(node: dict[str, Any], x: float, depth: int) -> None:
        nonlocal depth_max
        for frame, kid in sorted(node["kids"].items()):
            w = kid["n"] / total * width
            if w >= 0.3:
                depth_max = max(depth_max, depth)
                func, where = _short(frame)
                label = f"{func} ({where})"
                pct = 100 * kid["n"] / total
                hue = {"gateway": 20, "adapters": 35}.get(package_of(where), 200)
                fill = f"hsl({hue + (hash(func) % 20)},70%,{60 + hash(where) % 15}%)"
                shown = html.escape(label[: int(w / 7)]) if w > 30 else ""
                rects.append(
                    f'<g><title>{html.escape(label)} — {kid["n"]} samples ({pct:.1f}%)</title>'
                    f'<rect x="{x:.1f}" y="{30 + depth * row_h}" width="{w:.1f}"'
                    f' height="{row_h - 1}"'
                    f' fill="{fill}"/><text x="{x + 2:.1f}" y="{30 + depth * row_h + 12}">'
                    f"{shown}</text></g>"
                )
                walk(kid, x, depth + 1)
            x += w

    walk(tree, 0.0, 0)
    height = 40 + (depth_max + 1) * row_h
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="monospace" font-size="11">'
        f'<text x="4" y="18" font-size="14">{html.escape(title)} — {total} samples '
        f"(hover a frame for its share)</text>{''.join(rects)}</svg>"
    )
    path.write_text(svg)


if __name__ == "__main__":
    raw = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/profile.txt").read_text()
    sys.stdout.write(format_summary(summarise(raw)))
