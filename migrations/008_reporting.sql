-- Reporting, support search, metrics and data retention (docs/http-api.md, docs/architecture.md).
--
-- IF NOT EXISTS: on a large existing table, create these first with CREATE INDEX CONCURRENTLY
-- under the same names (this file then only records them), since a plain CREATE INDEX blocks
-- writes to messages while it builds.

-- GET /v1/reports/deliverability counts statuses over a created_at range: with channel and
-- status in the index, an index-only scan (no heap visit) whatever the table's size.
CREATE INDEX IF NOT EXISTS messages_created_idx ON messages (created_at) INCLUDE (channel, status);
-- The same for one campaign; also the newest-first walk of GET /v1/messages?campaign_id=.
CREATE INDEX IF NOT EXISTS messages_campaign_created_idx ON messages (campaign_id, created_at)
    INCLUDE (channel, status) WHERE campaign_id IS NOT NULL;
-- Suppressions by reason: only suppressed rows, with what the report filters and groups on.
CREATE INDEX IF NOT EXISTS messages_suppressed_idx ON messages (created_at)
    INCLUDE (channel, campaign_id, reason) WHERE status = 'suppressed';

-- GET /v1/messages?address=: raw-address messages, and user_id messages by endpoint address.
-- Case-insensitive, as support staff type addresses.
CREATE INDEX IF NOT EXISTS messages_recipient_idx ON messages (lower(recipient), created_at)
    WHERE recipient IS NOT NULL;
CREATE INDEX IF NOT EXISTS deliveries_address_idx ON deliveries (lower(address));

-- The gateway_deferred_messages gauge: an index-only count of the deferred backlog.
CREATE INDEX IF NOT EXISTS messages_deferred_idx ON messages (due_at) WHERE status = 'deferred';

-- Retention (gateway purge): receipts by message, inbound messages by age.
CREATE INDEX IF NOT EXISTS provider_receipts_message_idx ON provider_receipts (message_id);
CREATE INDEX IF NOT EXISTS inbound_messages_created_idx ON inbound_messages (created_at);

-- One row per purge, so that with GATEWAY_RETENTION_DAYS set the replicas purge once a day
-- between them (the check and the purge run under an advisory lock).
CREATE TABLE purge_runs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    cutoff      timestamptz NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz,
    deleted     jsonb
);
