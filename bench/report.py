"""The summary: the issue's targets, met or not (reported, never adjusted), and one table."""

from __future__ import annotations

from typing import Any

from bench.common import P99_TARGET_MS


def _get(data: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    phases = results.get("phases", {})
    workers = results.get("config", {}).get("workers", 1)
    out: list[dict[str, Any]] = []

    def add(name: str, value: Any, target: str, ok: bool | None, note: str = "") -> None:
        out.append({"target": name, "value": value, "goal": target,
                    "met": ok, **({"note": note} if note else {})})

    rate = _get(phases, "throughput", "rate_jobs_per_s")
    if rate is not None:
        note = "" if workers == 1 else f"{workers} processes: the target is for one"
        add("end-to-end rate, 1 process", rate, ">= 2000 jobs/s",
            rate >= 2000 if workers == 1 else None, note)
        ratio = _get(phases, "throughput", "ratio_to_raw")
        add("ratio end-to-end / raw", ratio, ">= 0.5", ratio is not None and ratio >= 0.5)
    p99 = _get(phases, "latency", "latency", "p99_ms")
    if p99 is not None:
        floor = _get(phases, "raw_floor", "latency", "p99_ms")
        add(f"p99 latency at {_get(phases, 'latency', 'offered_rate')}/s offered", p99,
            f"<= {P99_TARGET_MS:g} ms", p99 <= P99_TARGET_MS,
            "" if floor is None else f"a bare consumer at that rate: p99 {floor} ms")
    inflight = _get(phases, "inflight", "inflight") or {}
    peak = inflight.get("peak_rss_while_at_target_mb") or inflight.get("peak_rss_until_release_mb")
    if peak:
        worst = max(peak.values())
        reached = inflight.get("peak_in_flight", 0) >= 0.98 * inflight.get("target", 1)
        add("peak RSS per process at 10,000 in flight", worst, "<= 150 MB", worst <= 150,
            f"in flight peaked at {inflight.get('peak_in_flight')} of "
            f"{inflight.get('target')}{'' if reached else ': target NOT reached'}")
    for name, phase in phases.items():
        ok = _get(phase, "correctness", "ok")
        if ok is not None:
            add(f"correctness ({name})", "pass" if ok else "FAIL", "all checks", ok)
    return out


def correct(results: dict[str, Any]) -> bool:
    return all(_get(p, "correctness", "ok") in (True, None)
               for p in results.get("phases", {}).values())


def _fmt_windows(windows: list[dict] | None) -> str:
    """Each 10 s window's p99 and sends, in order: a backlog built early shows as a hump.

    A window of a stray job or two (a clock tick either side of the phase) is left out."""
    if not windows:
        return "-"
    shown = [w for w in windows if w["count"] >= 100]
    return ", ".join(f"{w['p99_ms']:g} ({w['count']})" for w in shown) or "-"


def _fmt_by_busy(by_load: dict[str, Any] | None) -> str:
    """Per band of machine load: seconds whose p99 met the limit, of the seconds in it, and
    their median p99."""
    if not by_load or not by_load.get("by_machine_busy"):
        return "-"
    parts = []
    for band in by_load["by_machine_busy"]:
        low, high = band["busy_from"], band["busy_to"]
        name = f"< {high:g} %" if low == 0 else f">= {low:g} %" if high is None else f"{low:g}-{high:g} %"
        parts.append(f"{name}: {band['within_limit']}/{band['seconds']} "
                     f"(median {band['median_p99_ms']:g} ms)")
    return " · ".join(parts)


def _fmt_maintenance(by_load: dict[str, Any] | None) -> str:
    """Seconds in which an ANALYZE or VACUUM ran, against the others: median p99 of each."""
    if not by_load:
        return "-"
    busy, quiet = by_load["with_maintenance"], by_load["without_maintenance"]
    if not busy["seconds"]:
        return f"none (the {quiet['seconds']} s: median p99 {quiet['median_p99_ms']} ms)"
    return (f"{busy['seconds']} s: median p99 {busy['median_p99_ms']:g} ms, worst "
            f"{busy['worst_p99_ms']:g}; the other {quiet['seconds']} s: median "
            f"{quiet['median_p99_ms']} ms")


def _lat(lat: dict[str, Any] | None) -> str:
    if not lat or not lat.get("count"):
        return "-"
    return f"{lat['p50_ms']} / {lat['p95_ms']} / {lat['p99_ms']} / {lat['max_ms']}"


def table(results: dict[str, Any]) -> str:
    phases = results.get("phases", {})
    rows: list[tuple[str, str]] = []
    machine = results.get("machine", {})
    cfg = results.get("config", {})
    rows.append(("machine", f"{machine.get('cores')} cores {machine.get('cpu', '')[:40]}, "
                            f"{machine.get('memory_gib')} GiB, PostgreSQL "
                            f"{machine.get('postgresql', '?')}, RabbitMQ "
                            f"{machine.get('rabbitmq', '?')}"))
    rows.append(("config", f"workers {cfg.get('workers')}, prefetch {cfg.get('prefetch')}, batch "
                           f"{cfg.get('batch_size')}/{cfg.get('batch_wait_ms')} ms, log "
                           f"{cfg.get('log_level')}, SMS delay {cfg.get('sms_delay_ms')} ms, "
                           f"{cfg.get('users')} users, daily cap {cfg.get('daily_cap')}, "
                           f"{'inline content' if cfg.get('inline') else 'stored templates'}"))
    raw = phases.get("raw")
    if raw:
        rows.append(("raw ceiling (bare aio-pika, same prefetch)",
                     f"{raw['rate']} msg/s ({raw['messages']} msgs, {raw['mean_body_bytes']} B)"))
    tp = phases.get("throughput")
    if tp:
        rows += [
            ("throughput: end-to-end rate",
             f"{tp['rate_jobs_per_s']} jobs/s ({tp['jobs']} jobs, {tp['rate_sent_per_s']} sends/s;"
             f" first publish -> last acceptance {tp['first_publish_to_last_acceptance_s']} s)"),
            ("throughput: ratio to raw", str(tp.get("ratio_to_raw"))),
            ("throughput: publish rate", f"{tp['publish']['rate']} jobs/s (confirmed)"),
            ("throughput: latency p50/p95/p99/max ms", _lat(tp.get("latency"))),
            ("throughput: peak RSS per process MB", _fmt_rss(tp.get("peak_rss_mb"))),
            ("throughput: DB transactions per job",
             f"{tp['database']['xacts_per_job']} (xact_commit delta; "
             f"{tp['database']['tup_inserted_per_job']} rows inserted, "
             f"{tp['database']['tup_updated_per_job']} updated per job)"),
            ("throughput: CPU (% of one core)", _fmt_cpu(tp.get("cpu"))),
            ("throughput: context switches per job", _fmt_switches(tp.get("cpu"), tp["jobs"])),
            ("throughput: gateway CPU per job",
             f"{tp.get('gateway_cpu_ms_per_job')} ms of gateway CPU (CPU-bound ceiling "
             f"~{_ceiling(tp)} jobs/s with a full core per process)"),
            ("throughput: others' load before the phase",
             f"{_get(tp, 'background_before_phase', 'machine_busy_percent')} % of the machine; "
             f"CPU gauge {_get(tp, 'background_before_phase', 'cpu_gauge_ms')} ms"),
        ]
    inf = phases.get("inflight")
    if inf and inf.get("inflight"):
        i = inf["inflight"]
        rows += [
            ("inflight: peak jobs in flight", f"{i['peak_in_flight']} (target {i['target']})"),
            ("inflight: peak RSS while >= 98 % of target MB",
             _fmt_rss(i.get("peak_rss_while_at_target_mb"))),
            ("inflight: peak RSS incl. the drain afterwards MB", _fmt_rss(inf.get("peak_rss_mb"))),
        ]
    lat = phases.get("latency")
    if lat:
        rows += [
            ("latency: offered / achieved",
             f"{lat.get('offered_rate')} / {lat['rate_jobs_per_s']} jobs/s for "
             f"{lat['jobs']} jobs ({lat.get('rate_source', '')})"),
            ("latency: p50/p95/p99/max ms", _lat(lat.get("latency"))),
            ("latency: same, after 5 s warm-up", _lat(lat.get("latency_after_5s_warmup"))),
            ("latency: p99 per 10 s window ms (sends)", _fmt_windows(lat.get("latency_windows_10s"))),
            (f"latency: seconds with p99 <= {P99_TARGET_MS:g} ms, by machine busy",
             _fmt_by_busy(lat.get("latency_by_load"))),
            ("latency: seconds with an ANALYZE or VACUUM at work",
             _fmt_maintenance(lat.get("latency_by_load"))),
            ("latency: peak RSS per process MB", _fmt_rss(lat.get("peak_rss_mb"))),
            ("latency: CPU (% of one core)", _fmt_cpu(lat.get("cpu"))),
            ("latency: context switches per job", _fmt_switches(lat.get("cpu"), lat["jobs"])),
            ("latency: others' load before the phase",
             f"{_get(lat, 'background_before_phase', 'machine_busy_percent')} % of the machine; "
             f"CPU gauge {_get(lat, 'background_before_phase', 'cpu_gauge_ms')} ms"),
        ]
    floor = phases.get("raw_floor")
    if floor:
        rows += [
            ("raw floor: bare consumer, offered / achieved",
             f"{floor.get('offered_rate')} / {floor['rate']} msg/s for {floor['messages']} msgs"),
            ("raw floor: publish -> consume p50/p95/p99/max ms", _lat(floor.get("latency"))),
            ("raw floor: CPU (% of one core)", _fmt_cpu(floor.get("cpu"))),
            ("raw floor: context switches per message",
             _fmt_switches(floor.get("cpu"), floor["messages"])),
        ]
    curve = phases.get("curve")
    if curve:
        rows.append(("curve: the maximum", f"{curve['max_rate']} jobs/s, from "
                                          f"{curve['max_rate_source']}; "
                                          f"{curve['seconds_per_point']} s at each fraction"))
        for point in curve["points"]:
            rows.append((
                f"curve: {point['fraction']:.0%} = {point['offered_rate']}/s",
                f"achieved {point['achieved_rate']}; p50/p95/p99/max ms {_lat(point['latency'])};"
                f" busy {point['machine_busy_percent']}%, gateway {point['gateway_cpu_ms_per_job']}"
                f" ms/job, {point['machine_context_switches_per_job']} switches/job",
            ))
        rows.append((f"curve: highest rate with p99 <= {P99_TARGET_MS:g} ms",
                     str(curve.get("highest_rate_with_p99_within_50ms") or "none of these")))
    width = max(len(r[0]) for r in rows) + 2
    lines = ["", "=" * 100, "messaging-gateway benchmark summary", "=" * 100]
    lines += [f"{name:<{width}}{value}" for name, value in rows]
    lines += ["-" * 100, f"{'target':<48}{'value':<14}{'goal':<18}met"]
    for t in results.get("targets", []):
        met = {True: "yes", False: "NO", None: "n/a"}[t["met"]]
        note = f"  ({t['note']})" if t.get("note") else ""
        lines.append(f"{t['target']:<48}{str(t['value']):<14}{t['goal']:<18}{met}{note}")
    for name, phase in phases.items():
        checks = phase.get("correctness") or {}
        failed = [k for k, c in checks.items() if isinstance(c, dict) and not c.get("ok")]
        if failed:
            lines.append(f"  {name}: failed checks: " + "; ".join(
                f"{k} {({kk: vv for kk, vv in checks[k].items() if kk != 'ok'})}" for k in failed))
    earlier = results.get("earlier_phases") or {}
    if earlier:
        lines.append("kept in the JSON from earlier runs (not in this table): " + ", ".join(
            f"{name} ({phase.get('run_at', '?')})" for name, phase in earlier.items()))
    lines.append("=" * 100)
    return "\n".join(lines)


def _ceiling(phase: dict[str, Any]) -> str:
    ms = phase.get("gateway_cpu_ms_per_job")
    workers = phase.get("workers") or 1
    return f"{1000 / (ms / workers):.0f}" if ms else "?"


def _fmt_rss(rss: dict[str, float] | None) -> str:
    if not rss:
        return "-"
    return ", ".join(f"{k} {v}" for k, v in rss.items())


def _fmt_cpu(cpu: dict[str, Any] | None) -> str:
    if not cpu:
        return "-"
    roles = ", ".join(f"{k} {v['percent_of_one_core']}" for k, v in cpu["roles"].items())
    return f"{roles}; machine busy {cpu['machine_busy_percent']}% of {cpu['cores']} cores"


def _fmt_switches(cpu: dict[str, Any] | None, jobs: int) -> str:
    """Context switches per job, the machine's and each role's (every thread's)."""
    if not cpu or "machine_context_switches_per_s" not in cpu or not jobs:
        return "-"
    machine = cpu["machine_context_switches_per_s"] * cpu["wall_seconds"] / jobs
    roles = ", ".join(
        f"{k} {(v['context_switches']['voluntary'] + v['context_switches']['involuntary']) / jobs:.2f}"
        for k, v in cpu["roles"].items() if "context_switches" in v
    )
    return f"machine {machine:.2f}; {roles}"


def main() -> None:
    """``python -m bench.report [bench/results/latest.json]``: the table of every phase the
    file holds, this run's and the earlier runs' it kept."""
    import sys
    from pathlib import Path

    import orjson

    path = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/latest.json")
    results = orjson.loads(path.read_bytes())
    merged = dict(results)
    merged["phases"] = {**(results.get("earlier_phases") or {}), **results.get("phases", {})}
    order = ["raw", "throughput", "inflight", "latency", "raw_floor", "curve"]
    merged["phases"] = {k: merged["phases"][k] for k in order if k in merged["phases"]} | {
        k: v for k, v in merged["phases"].items() if k not in order}
    merged["earlier_phases"] = {}
    merged["targets"] = targets(merged)
    print(table(merged))
    for name, phase in merged["phases"].items():
        print(f"  {name}: run at {phase.get('run_at') or results.get('started_at')}")


if __name__ == "__main__":
    main()
