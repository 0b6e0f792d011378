-- Message templates: a name, and its immutable versions numbered from 1.
--
-- templates.latest is the highest version; the row is also what a PUT locks to number the next
-- version. deleted_at set: the name no longer resolves to its latest version, but every version
-- still loads by number (jobs pinned to one keep working); a later PUT clears it.
CREATE TABLE templates (
    name        text PRIMARY KEY,
    latest      integer NOT NULL,
    deleted_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Never updated or deleted: a version's body is what it was when written.
CREATE TABLE template_versions (
    name        text NOT NULL REFERENCES templates (name),
    version     integer NOT NULL CHECK (version >= 1),
    body        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);
