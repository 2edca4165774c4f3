CREATE TABLE api_keys (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    key_hash text NOT NULL UNIQUE,
    admin boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at timestamptz
);

-- Deleted links keep their row (deleted_at set) so that a code is never given out again.
CREATE TABLE links (
    id bigserial PRIMARY KEY,
    code text COLLATE "C" NOT NULL UNIQUE,
    url text NOT NULL,
    owner_id bigint REFERENCES api_keys (id),
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    expires_at timestamptz,
    max_visits bigint,
    redirect_status smallint NOT NULL DEFAULT 302,
    disabled boolean NOT NULL DEFAULT false,
    deleted_at timestamptz,
    clicks bigint NOT NULL DEFAULT 0,
    -- Bumped by every change, so a cache never lets an older answer replace a newer one.
    version bigint NOT NULL DEFAULT 1
);

CREATE INDEX links_owner_newest ON links (owner_id, id DESC) WHERE deleted_at IS NULL;
