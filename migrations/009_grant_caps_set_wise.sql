-- Cap slots for a batch, set-wise when the batch's jobs touch distinct counters.
--
-- gateway_grant_caps (002) decides job by job, in the batch's order: two SELECTs and an UPDATE
-- or two per job, each a statement of its own inside the function (~6.6 ms for 35 jobs on the
-- benchmark's machine, the second-costliest statement of the hot path). When no counter is
-- asked for twice in the batch, which is the common case (a batch rarely holds two messages
-- for one recipient), no decision depends on another, and one statement decides and counts
-- them all. A batch with a counter asked for twice takes the job-by-job path, unchanged.
-- Same signature, same answers, same locks (taken in the same order before any decision).
CREATE OR REPLACE FUNCTION gateway_grant_caps(
    p_ids text[], p_recipients text[], p_days date[], p_channels text[],
    p_daily_caps integer[], p_channel_caps integer[], p_campaigns text[], p_campaign_caps integer[]
) RETURNS TABLE (message_id text, granted boolean, reason text)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    used integer;
    granted_ids text[] := '{}';
BEGIN
    -- The arrays are read with unnest(...) rather than generate_subscripts (002):
    -- the planner knows unnest's row count (the arrays' length, or 10 when it cannot see
    -- them), where it takes 1,000 rows from generate_subscripts and then hash-joins whole
    -- counter tables (a 35-job batch scanned 7,500 daily counters three times: ~7 ms).
    INSERT INTO daily_counters (recipient, day, channel)
    SELECT DISTINCT k.recipient, k.day, k.channel FROM (
        SELECT r.recipient, r.day, '' AS channel
        FROM unnest(p_recipients, p_days, p_daily_caps) AS r(recipient, day, cap)
        WHERE r.cap IS NOT NULL
        UNION
        SELECT r.recipient, r.day, r.channel
        FROM unnest(p_recipients, p_days, p_channels, p_channel_caps) AS r(recipient, day, channel, cap)
        WHERE r.cap IS NOT NULL
    ) AS k
    ORDER BY 1, 2, 3
    ON CONFLICT DO NOTHING;
    INSERT INTO campaign_counters (campaign_id, recipient)
    SELECT DISTINCT r.campaign, r.recipient
    FROM unnest(p_campaigns, p_recipients, p_campaign_caps) AS r(campaign, recipient, cap)
    WHERE r.cap IS NOT NULL
    ORDER BY 1, 2
    ON CONFLICT DO NOTHING;

    -- Lock every counter of the batch, in one order for all consumers (no deadlocks): each
    -- counter by its key (an index lookup however many counters the table holds), in the
    -- order of the sorted keys.
    PERFORM 1
    FROM (SELECT DISTINCT k.recipient, k.day, k.channel FROM (
              SELECT r.recipient, r.day, '' AS channel
              FROM unnest(p_recipients, p_days, p_daily_caps) AS r(recipient, day, cap)
              WHERE r.cap IS NOT NULL
              UNION ALL
              SELECT r.recipient, r.day, r.channel
              FROM unnest(p_recipients, p_days, p_channels, p_channel_caps) AS r(recipient, day, channel, cap)
              WHERE r.cap IS NOT NULL) AS k
          ORDER BY 1, 2, 3) AS k,
    LATERAL (SELECT 1 FROM daily_counters AS d
             WHERE d.recipient = k.recipient AND d.day = k.day AND d.channel = k.channel
             FOR UPDATE) AS locked;
    PERFORM 1
    FROM (SELECT DISTINCT r.campaign, r.recipient
          FROM unnest(p_campaigns, p_recipients, p_campaign_caps) AS r(campaign, recipient, cap)
          WHERE r.cap IS NOT NULL
          ORDER BY 1, 2) AS k,
    LATERAL (SELECT 1 FROM campaign_counters AS c
             WHERE c.campaign_id = k.campaign AND c.recipient = k.recipient
             FOR UPDATE) AS locked;

    -- Every counter asked for at most once: decide and count in one statement. (The channel
    -- is '' for the daily cap and the job's channel for the per-channel one; a job with both
    -- asks for two different counters.)
    IF NOT EXISTS (
        SELECT 1 FROM (
            SELECT 'd' AS k, r.recipient AS a, r.day::text AS b, '' AS c
            FROM unnest(p_recipients, p_days, p_daily_caps) AS r(recipient, day, cap)
            WHERE r.cap IS NOT NULL
            UNION ALL
            SELECT 'd', r.recipient, r.day::text, r.channel
            FROM unnest(p_recipients, p_days, p_channels, p_channel_caps) AS r(recipient, day, channel, cap)
            WHERE r.cap IS NOT NULL
            UNION ALL
            SELECT 'c', r.campaign, r.recipient, ''
            FROM unnest(p_campaigns, p_recipients, p_campaign_caps) AS r(campaign, recipient, cap)
            WHERE r.cap IS NOT NULL
        ) AS asked
        GROUP BY k, a, b, c HAVING count(*) > 1
    ) THEN
        RETURN QUERY
        WITH decided AS (
            SELECT r.*,
                   CASE WHEN r.campaign_cap IS NOT NULL
                             AND (SELECT cc.count FROM campaign_counters AS cc
                                  WHERE cc.campaign_id = r.campaign
                                    AND cc.recipient = r.recipient) >= r.campaign_cap
                            THEN 'campaign_cap'
                        WHEN r.daily_cap IS NOT NULL
                             AND (SELECT dd.count FROM daily_counters AS dd
                                  WHERE dd.recipient = r.recipient AND dd.day = r.day
                                    AND dd.channel = '') >= r.daily_cap
                            THEN 'daily_cap'
                        WHEN r.channel_cap IS NOT NULL
                             AND (SELECT dc.count FROM daily_counters AS dc
                                  WHERE dc.recipient = r.recipient AND dc.day = r.day
                                    AND dc.channel = r.channel) >= r.channel_cap
                            THEN 'daily_cap'
                   END AS refusal
            FROM unnest(p_ids, p_recipients, p_days, p_channels, p_daily_caps, p_channel_caps,
                        p_campaigns, p_campaign_caps) WITH ORDINALITY
                AS r(id, recipient, day, channel, daily_cap, channel_cap, campaign, campaign_cap, n)
        ), campaign_counted AS (
            UPDATE campaign_counters AS c SET count = c.count + 1
            FROM decided AS g
            WHERE g.refusal IS NULL AND g.campaign_cap IS NOT NULL
              AND c.campaign_id = g.campaign AND c.recipient = g.recipient
        ), daily_counted AS (
            UPDATE daily_counters AS d SET count = d.count + 1
            FROM (SELECT g.recipient, g.day, '' AS channel FROM decided AS g
                  WHERE g.refusal IS NULL AND g.daily_cap IS NOT NULL
                  UNION ALL
                  SELECT g.recipient, g.day, g.channel FROM decided AS g
                  WHERE g.refusal IS NULL AND g.channel_cap IS NOT NULL) AS k
            WHERE d.recipient = k.recipient AND d.day = k.day AND d.channel = k.channel
        ), marked AS (
            UPDATE messages AS m SET cap_granted = true
            FROM decided AS g WHERE g.refusal IS NULL AND m.id = g.id
        )
        SELECT g.id, g.refusal IS NULL, g.refusal FROM decided AS g ORDER BY g.n;
        RETURN;
    END IF;

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
