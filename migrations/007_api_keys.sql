-- API keys (gateway/keys.py): only sha256 of the secret is kept; the key is shown once.
CREATE TABLE api_keys (
    id              text PRIMARY KEY,
    name            text NOT NULL,
    scope           text NOT NULL CHECK (scope IN ('read', 'send', 'admin')),
    secret_hash     bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at    timestamptz,
    revoked_at      timestamptz
);

-- A name picks one active key (`gateway keys revoke NAME`); a revoked key's name may be reused.
CREATE UNIQUE INDEX api_keys_active_name ON api_keys (name) WHERE revoked_at IS NULL;
