-- Messages: one row per send job, keyed by the job id (the idempotency key).
--
-- status: queued      accepted over HTTP or re-queued by the scheduler, waiting on AMQP
--         processing  claimed by a consumer
--         deferred    waiting for due_at (send_at, retry backoff)
--         sent | failed | suppressed | expired   final
-- due_at: for deferred, when to re-queue; for queued/processing, when the claim lapses and the
--         scheduler re-queues it (a consumer died, a publish was lost).
CREATE TABLE messages (
    id                  text PRIMARY KEY,
    channel             text NOT NULL,
    kind                text NOT NULL,
    status              text NOT NULL,
    job                 jsonb NOT NULL,
    recipient           text,
    campaign_id         text,
    send_at             timestamptz,
    expires_at          timestamptz,
    attempts            integer NOT NULL DEFAULT 0,
    failures            integer NOT NULL DEFAULT 0,
    reason              text,
    provider_message_id text,
    due_at              timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- The scheduler's scan: only unfinished rows are indexed, so the index stays small.
CREATE INDEX messages_due_idx ON messages (due_at)
    WHERE status IN ('queued', 'processing', 'deferred');

-- The timeline of each message, as published on gateway.events.
CREATE TABLE message_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id  text NOT NULL,
    status      text NOT NULL,
    reason      text,
    detail      jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX message_events_message_idx ON message_events (message_id, id);
