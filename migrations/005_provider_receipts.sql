-- Delivery receipts from providers (status callbacks), recorded once per (provider, id, status)
-- so a retried callback is processed once.
CREATE TABLE provider_receipts (
    provider            text NOT NULL,
    provider_message_id text NOT NULL,
    status              text NOT NULL,
    message_id          text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, provider_message_id, status)
);
CREATE INDEX messages_provider_id_idx ON messages (provider_message_id)
    WHERE provider_message_id IS NOT NULL;
CREATE INDEX deliveries_provider_id_idx ON deliveries (provider_message_id)
    WHERE provider_message_id IS NOT NULL;
