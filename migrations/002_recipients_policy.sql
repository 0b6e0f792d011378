-- Recipients, opt-outs and delivery policy.

CREATE TABLE users (
    id          text PRIMARY KEY,
    timezone    text,
    locale      text,
    attributes  jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A user's addresses; several per channel (two phones, an iPhone and an iPad).
CREATE TABLE endpoints (
    user_id     text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    channel     text NOT NULL,
    address     text NOT NULL,
    platform    text,
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, channel, address)
);
CREATE INDEX endpoints_address_idx ON endpoints (channel, address);

-- Addresses that asked not to be contacted on a channel. Never purged.
CREATE TABLE opt_outs (
    channel     text NOT NULL,
    address     text NOT NULL,
    source      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, address)
);

-- The global policy: a single row.
CREATE TABLE policy (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    rules       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE campaigns (
    id          text PRIMARY KEY,
    rules       jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Cap counters. recipient is 'user:<id>' or 'address:<channel>:<address>'; channel '' counts
-- every channel together (the daily cap), a channel name its own per-channel cap.
CREATE TABLE daily_counters (
    recipient   text NOT NULL,
    day         date NOT NULL,
    channel     text NOT NULL,
    count       integer NOT NULL DEFAULT 0,
    PRIMARY KEY (recipient, day, channel)
);
CREATE TABLE campaign_counters (
    campaign_id text NOT NULL,
    recipient   text NOT NULL,
    count       integer NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, recipient)
);

-- A message whose cap slot was taken keeps it across retries (never counted twice).
ALTER TABLE messages ADD COLUMN cap_granted boolean NOT NULL DEFAULT false;
CREATE INDEX messages_campaign_idx ON messages (campaign_id, status) WHERE campaign_id IS NOT NULL;

-- One row per endpoint a user_id job went to (a raw-address job has none: the message row is
-- its delivery).
CREATE TABLE deliveries (
    message_id          text NOT NULL,
    address             text NOT NULL,
    status              text NOT NULL,
    reason              text,
    provider_message_id text,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, address)
);

-- Grant cap slots to a batch of messages, atomically, in arrival order: one call per batch.
-- Each message passes its recipient key, local day, channel and the caps that apply to it
-- (NULL = no such cap). A message is granted only if every cap it is subject to has room;
-- then all its counters move together. Counters are created, then locked in one global order
-- (daily rows by key, then campaign rows by key), so concurrent batches cannot deadlock and a
-- cap of N lets exactly N through however many consumers run.
CREATE FUNCTION gateway_grant_caps(
    p_ids text[], p_recipients text[], p_days date[], p_channels text[],
    p_daily_caps integer[], p_channel_caps integer[], p_campaigns text[], p_campaign_caps integer[]
) RETURNS TABLE (message_id text, granted boolean, reason text)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    used integer;
    granted_ids text[] := '{}';
BEGIN
    INSERT INTO daily_counters (recipient, day, channel)
    SELECT DISTINCT k.recipient, k.day, k.channel FROM (
        SELECT p_recipients[n] AS recipient, p_days[n] AS day, '' AS channel
        FROM generate_subscripts(p_ids, 1) AS n WHERE p_daily_caps[n] IS NOT NULL
        UNION
        SELECT p_recipients[n], p_days[n], p_channels[n]
        FROM generate_subscripts(p_ids, 1) AS n WHERE p_channel_caps[n] IS NOT NULL
    ) AS k
    ORDER BY 1, 2, 3
    ON CONFLICT DO NOTHING;
    INSERT INTO campaign_counters (campaign_id, recipient)
    SELECT DISTINCT p_campaigns[n], p_recipients[n]
    FROM generate_subscripts(p_ids, 1) AS n WHERE p_campaign_caps[n] IS NOT NULL
    ORDER BY 1, 2
    ON CONFLICT DO NOTHING;

    PERFORM 1 FROM daily_counters AS d
    WHERE (d.recipient, d.day, d.channel) IN (
        SELECT p_recipients[n], p_days[n], '' FROM generate_subscripts(p_ids, 1) AS n
        WHERE p_daily_caps[n] IS NOT NULL
        UNION
        SELECT p_recipients[n], p_days[n], p_channels[n] FROM generate_subscripts(p_ids, 1) AS n
        WHERE p_channel_caps[n] IS NOT NULL)
    ORDER BY d.recipient, d.day, d.channel
    FOR UPDATE;
    PERFORM 1 FROM campaign_counters AS c
    WHERE (c.campaign_id, c.recipient) IN (
        SELECT p_campaigns[n], p_recipients[n] FROM generate_subscripts(p_ids, 1) AS n
        WHERE p_campaign_caps[n] IS NOT NULL)
    ORDER BY c.campaign_id, c.recipient
    FOR UPDATE;

    FOR i IN 1 .. coalesce(array_length(p_ids, 1), 0) LOOP
        message_id := p_ids[i];
        granted := true;
        reason := NULL;
        IF p_campaign_caps[i] IS NOT NULL THEN
            SELECT c.count INTO used FROM campaign_counters AS c
            WHERE c.campaign_id = p_campaigns[i] AND c.recipient = p_recipients[i];
            IF used >= p_campaign_caps[i] THEN granted := false; reason := 'campaign_cap'; END IF;
        END IF;
        IF granted AND p_daily_caps[i] IS NOT NULL THEN
            SELECT d.count INTO used FROM daily_counters AS d
            WHERE d.recipient = p_recipients[i] AND d.day = p_days[i] AND d.channel = '';
            IF used >= p_daily_caps[i] THEN granted := false; reason := 'daily_cap'; END IF;
        END IF;
        IF granted AND p_channel_caps[i] IS NOT NULL THEN
            SELECT d.count INTO used FROM daily_counters AS d
            WHERE d.recipient = p_recipients[i] AND d.day = p_days[i] AND d.channel = p_channels[i];
            IF used >= p_channel_caps[i] THEN granted := false; reason := 'daily_cap'; END IF;
        END IF;
        IF granted THEN
            IF p_campaign_caps[i] IS NOT NULL THEN
                UPDATE campaign_counters AS c SET count = c.count + 1
                WHERE c.campaign_id = p_campaigns[i] AND c.recipient = p_recipients[i];
            END IF;
            UPDATE daily_counters AS d SET count = d.count + 1
            WHERE d.recipient = p_recipients[i] AND d.day = p_days[i]
              AND ((d.channel = '' AND p_daily_caps[i] IS NOT NULL)
                   OR (d.channel = p_channels[i] AND p_channel_caps[i] IS NOT NULL));
            granted_ids := granted_ids || p_ids[i];
        END IF;
        RETURN NEXT;
    END LOOP;
    UPDATE messages AS m SET cap_granted = true WHERE m.id = ANY (granted_ids);
END;
$$;
