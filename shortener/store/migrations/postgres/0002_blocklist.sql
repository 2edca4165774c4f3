CREATE TABLE blocked_domains (
    domain text PRIMARY KEY,
    reason text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL
);
