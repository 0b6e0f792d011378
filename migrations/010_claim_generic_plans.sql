-- The claim as a function whose statement keeps one generic plan per connection.
--
-- With a batch's arrays as parameters, PostgreSQL's default plan cache mode ('auto') makes a
-- custom plan for every execution while the arrays are short: planning the claim took 0.73 ms
-- of the server's CPU for a 4-job batch, more than running it (0.62 ms), on every batch of a
-- lightly loaded gateway (bench/README.md, "Later morning runs"). Here the statement is
-- planned once, generically, per connection. The same goes for the caps function's statements.
--
-- A generic plan made while a table is small can scan the whole table once it has grown; the
-- gateway's consumer analyses a hot table whenever it has doubled since its last ANALYZE
-- (gateway/planner_stats.py), and an ANALYZE makes every connection re-plan.
CREATE FUNCTION gateway_claim(
    p_ids text[], p_channels text[], p_kinds text[], p_jobs text[], p_recipients text[],
    p_campaigns text[], p_send_at timestamptz[], p_expires_at timestamptz[],
    p_lease_until timestamptz, p_now timestamptz, p_user_ids text[], p_senders text[],
    p_templates text[]
) RETURNS TABLE (
    id text, failures integer, cap_granted boolean, inserted boolean, created_at timestamptz,
    user_found boolean, timezone text, locale text, attributes text, endpoints text[],
    platforms text[], opted_out text[], delivered text[], campaign_rules text,
    campaign_found boolean, policy_rules text, template_latest integer
)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH input AS (
        SELECT * FROM unnest(p_ids, p_channels, p_kinds, p_jobs, p_recipients, p_campaigns,
                             p_send_at, p_expires_at, p_user_ids, p_senders,
                             p_templates)
            AS u(id, channel, kind, job, recipient, campaign_id, send_at, expires_at, user_id, sender,
                 template)
    ), claimed AS (
        INSERT INTO messages AS m (id, channel, kind, status, job, recipient, campaign_id, send_at,
                                   expires_at, attempts, due_at, created_at, updated_at)
        SELECT id, channel, kind, 'processing', job::jsonb, recipient, campaign_id, send_at,
               expires_at, 1, p_lease_until, p_now, p_now
        FROM input
        ON CONFLICT (id) DO UPDATE
            SET status = 'processing', attempts = m.attempts + 1, due_at = EXCLUDED.due_at,
                updated_at = EXCLUDED.updated_at
            WHERE m.status = 'queued' OR (m.status = 'processing' AND m.due_at <= p_now)
        RETURNING m.id, m.failures, m.cap_granted, (m.xmax = 0) AS inserted, m.created_at
    ), accepted AS (
        INSERT INTO message_events (message_id, status, created_at)
        SELECT id, 'accepted', p_now FROM claimed WHERE inserted
    ), opted AS (
        -- The batch's opt-outs, looked up for the whole batch at once (a subquery per row made
        -- PostgreSQL build a hash of opt_outs once per row): every address a job may reach, the
        -- raw one or the user's endpoints on the channel, that an opt-out of its scope covers.
        SELECT a.id, array_agg(a.address) AS addresses
        FROM (SELECT i.id, i.channel, i.sender, i.recipient AS address FROM input i
              WHERE i.recipient IS NOT NULL
              UNION ALL
              SELECT i.id, i.channel, i.sender, e.address FROM input i
              JOIN endpoints e ON e.user_id = i.user_id AND e.channel = i.channel) AS a
        WHERE EXISTS (
            SELECT 1 FROM opt_outs o
            WHERE o.channel = a.channel
              -- Opt-outs keep email addresses wholly in lower case (Jane@ and jane@ are one person).
              AND o.address = CASE WHEN a.channel = 'email' THEN lower(a.address) ELSE a.address END
              -- '' blocks every number of ours; a number blocks only what it sends.
              AND (o.scope = '' OR o.scope = a.sender))
        GROUP BY a.id
    )
    -- What the policy needs, in the same round trip: the user and its active endpoints on the
    -- job's channel, which of the addresses are opted out, the campaign's and global rules, and
    -- the deliveries already finished by an earlier attempt.
    SELECT c.id, c.failures, c.cap_granted, c.inserted, c.created_at,
           (u.id IS NOT NULL) AS user_found, u.timezone, u.locale, u.attributes::text AS attributes,
           coalesce(ep.endpoints, '{}') AS endpoints,
           coalesce(ep.platforms, '{}') AS platforms,
           coalesce(op.addresses, '{}') AS opted_out,
           coalesce((SELECT array_agg(d.address) FROM deliveries d
                     WHERE d.message_id = c.id AND d.status IN ('sent', 'failed', 'suppressed')
                       AND c.failures > 0), '{}') AS delivered,
           cp.rules::text AS campaign_rules, (cp.id IS NOT NULL) AS campaign_found,
           (SELECT p.rules::text FROM policy p) AS policy_rules,
           tl.latest AS template_latest
    FROM claimed c
    JOIN input i ON i.id = c.id
    -- The latest version of the template the job names without pinning one, read with the claim:
    -- its body comes from the pipeline's cache of immutable versions, so a batch whose versions
    -- are cached costs no statement of its own for its templates.
    LEFT JOIN templates tl ON tl.name = i.template AND tl.deleted_at IS NULL
    LEFT JOIN users u ON u.id = i.user_id
    LEFT JOIN campaigns cp ON cp.id = i.campaign_id
    LEFT JOIN opted op ON op.id = c.id
    LEFT JOIN LATERAL (
        SELECT array_agg(e.address ORDER BY e.created_at, e.address) AS endpoints,
               array_agg(coalesce(e.platform, '') ORDER BY e.created_at, e.address) AS platforms
        FROM endpoints e
        WHERE e.user_id = i.user_id AND e.channel = i.channel AND e.active) AS ep ON true;
END;
$$;

ALTER FUNCTION gateway_grant_caps(text[], text[], date[], text[], integer[], integer[], text[], integer[])
    SET plan_cache_mode = force_generic_plan;
