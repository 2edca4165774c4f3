CREATE TABLE api_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    admin INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    last_used_at REAL,
    revoked_at REAL
);

-- Times are seconds since the epoch, UTC. AUTOINCREMENT keeps ids (and so cursors) unique forever.
CREATE TABLE links (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    code TEXT NOT NULL UNIQUE,
    url TEXT NOT NULL,
    owner_id INTEGER REFERENCES api_keys (id),
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    expires_at REAL,
    max_visits INTEGER,
    redirect_status INTEGER NOT NULL DEFAULT 302,
    disabled INTEGER NOT NULL DEFAULT 0,
    deleted_at REAL,
    clicks INTEGER NOT NULL DEFAULT 0,
    -- Bumped by every change, so a cache never lets an older answer replace a newer one.
    version INTEGER NOT NULL DEFAULT 1
);

CREATE INDEX links_owner_newest ON links (owner_id, id DESC) WHERE deleted_at IS NULL;
