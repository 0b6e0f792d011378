"""CPU cost per job of each stage of the pipeline, measured in-process on the gateway's own
functions (``time.process_time``: this process's CPU, so neighbours on a shared machine matter
far less than for wall-clock figures). No database, broker or network: the pure per-message work.

``python -m bench.micro [--rounds N]`` prints one line per stage, microseconds per call.
"""

from __future__ import annotations

import argparse
import gc
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import orjson

from adapters.apns import build_headers, build_payload
from adapters.base import OutboundEmail
from adapters.mime import build_mime
from bench import seed
from gateway.amqp_frames import publish_frames
from gateway.decide import Incoming, PolicyMemo, decide
from gateway.jobs import parse_job
from gateway.outcomes import Outcome, Status
from gateway import pipeline
from gateway.pipeline import accepted_event
from gateway.policy import QuietHoursCache
from gateway.prepare import prepare
from gateway.render import Renderer
from gateway.settings import Settings
from gateway.store import Claim


class _Delivery:
    def __init__(self, body: bytes, routing_key: str) -> None:
        self.body = body
        self.routing_key = routing_key


# The gateway is being changed while this exists: find helpers by their current names.
_recipient = getattr(pipeline, "recipient_of", None) or getattr(pipeline, "_recipient")


def _new_message(incoming: Any) -> Any:
    try:
        return pipeline._new_message(incoming)  # type: ignore[call-arg]
    except TypeError:
        return pipeline._new_message(incoming, None)  # type: ignore[call-arg]


def _time(fn: Callable[[], Any], rounds: int) -> float:
    try:
        fn()  # warm caches (templates, zones)
    except Exception as exc:  # the API moved: say so rather than stop
        print(f"  (skipped a stage: {type(exc).__name__}: {exc})")
        return float("nan")
    gc.collect()
    start = time.process_time()
    for _ in range(rounds):
        fn()
    return (time.process_time() - start) / rounds * 1e6


def run(rounds: int) -> list[tuple[str, float, str]]:
    now = datetime.now(timezone.utc)
    population = seed.build_population(users=200, daily_cap=3, seed=1, now=now)
    workload = seed.build_workload(population, count=30, prefix="m", seed=1,
                                   transactional_share=0.0,
                                   expires_at=now + timedelta(minutes=30),
                                   templates=False)  # inline: no database here
    settings = Settings.load(database_url="postgresql://x@127.0.0.1/x",
                             amqp_url="amqp://x@127.0.0.1/", api_token="x" * 20)
    renderer = Renderer()
    users = {u.id: u for u in population.users}
    rules = population.policy_rules()
    by_channel = {}
    for job in workload.jobs:
        if job.expected == "sent" and job.channel not in by_channel:
            by_channel[job.channel] = job
    rows: list[tuple[str, float, str]] = []
    for channel, job in sorted(by_channel.items()):
        job.body["data"]["t0"] = f"{time.time():.6f}"
        body = orjson.dumps(job.body)
        user = users[job.user]
        parsed = parse_job(body, max_bytes=262144)
        incoming = Incoming(_Delivery(body, job.routing_key), parsed, "promotional",
                            _recipient(parsed))
        address = {"sms": user.phone, "email": user.email, "push": user.token}[channel]
        claim = Claim(id=parsed.id, failures=0, inserted=True, user_found=True,
                      timezone=user.timezone, endpoints=[address],
                      platforms={address: "apns"} if channel == "push" else {},
                      policy_rules=rules)
        rows.append((f"{channel}: parse_job (pydantic)", _time(
            lambda: parse_job(body, max_bytes=262144), rounds), "gateway/jobs.py parse_job"))
        rows.append((f"{channel}: _recipient + _new_message", _time(
            lambda: (_recipient(parsed), _new_message(incoming)), rounds),
            "gateway/pipeline.py recipient_of, _new_message"))
        # As in a batch: one memo for the batch's ``now``, quiet intervals kept across batches.
        now_decide = datetime.now(timezone.utc)
        memo = PolicyMemo(now_decide, QuietHoursCache())
        rows.append((f"{channel}: decide (policy, quiet hours, cap request)", _time(
            lambda: decide(incoming, claim, now_decide, memo), rounds),
            "gateway/decide.py decide"))
        rows.append((f"{channel}: prepare (typed_content, render, normalise)", _time(
            lambda: prepare(parsed, address, renderer=renderer, settings=settings), rounds),
            "gateway/prepare.py prepare"))
        message = prepare(parsed, address, renderer=renderer, settings=settings)
        if channel == "email":
            assert isinstance(message, OutboundEmail)
            rows.append(("email: build_mime", _time(
                lambda: build_mime(message, domain="localhost"), rounds), "adapters/mime.py build_mime"))
            content = build_mime(message, domain="localhost").content
            assert isinstance(content, bytes)  # the byte writer, not the email package fallback
            from adapters.smtp_client import _data

            # What the SMTP client does to the bytes before DATA: line ends, dot-stuffing.
            rows.append(("email: DATA payload (line ends + dot-stuffing)", _time(
                lambda: _data(content), rounds), "adapters/smtp_client.py _data"))
        if channel == "push":
            rows.append(("push: APNs build_payload + build_headers", _time(
                lambda: (build_payload(message),
                         build_headers(message, topic="t", now=time.time())),
                rounds), "adapters/apns.py build_payload, build_headers"))
        outcome = Outcome(parsed.id, channel, "promotional", Status.sent, now,
                          provider_message_id="SM123", detail={"duration_ms": 1.2})
        rows.append((f"{channel}: 2 event bodies (accepted + outcome)", _time(
            lambda: (accepted_event(parsed, "promotional", now), outcome.event()), rounds),
            "gateway/pipeline.py accepted_event, outcomes.py Outcome.event"))
    rows.append(("any: the frames of 2 events (accepted + outcome)", _time(_event_frames, rounds),
                 "gateway/amqp_frames.py publish_frames"))
    rows.append(("any: one info log line per outcome (structlog JSON, masked)",
                 _time(_log_line(), rounds), "gateway/pipeline.py _log_outcome"))
    rows.append(("any: Limits.from_json (per message in decide)", _time(
        lambda: __import__("gateway.rules", fromlist=["Limits"]).Limits.from_json(rules), rounds),
        "gateway/decide.py decide"))
    return rows


def _log_line() -> Callable[[], None]:
    import os
    import sys

    import structlog

    from gateway.logging import configure_logging
    from gateway.settings import LogFormat

    sys.stderr = open(os.devnull, "w")  # the line is rendered and written, to nowhere
    configure_logging(LogFormat.json, "info")
    log = structlog.get_logger("gateway.pipeline")
    fields = {"message_id": "thr-0000051", "status": "sent", "channel": "sms",
              "kind": "transactional", "to": "user:u002971", "duration_ms": 227.8,
              "deliveries": [{"address": "+14155550123", "status": "sent"}]}

    def line() -> None:
        log.info("message.outcome", **fields)

    return line


def _event_frames() -> None:
    body = b'{"message_id":"01J9ZV7Q8X4M2K5N6P7R8S9T0V","status":"sent","channel":"sms"}'
    publish_frames(1, "gateway.events", [("message.accepted", body, "e.1"),
                                         ("message.sent", body, "e.2")],
                   content_type="application/json", max_body_frame=131064)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    rows = run(args.rounds)
    width = max(len(r[0]) for r in rows) + 2
    print(f"{'stage':<{width}}{'us/call':>9}  where")
    for name, micros, where in rows:
        print(f"{name:<{width}}{micros:9.1f}  {where}")


if __name__ == "__main__":
    main()
