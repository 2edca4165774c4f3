-- Titles and tags, and the indexes that keep search and tag filters fast at millions of links.
-- pg_trgm is a trusted extension (PostgreSQL 13+): a database owner may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

ALTER TABLE links ADD COLUMN title text;
-- The title in lower case as the service folds it, whatever the database's locale.
ALTER TABLE links ADD COLUMN title_folded text;
ALTER TABLE links ADD COLUMN tags text[] NOT NULL DEFAULT '{}';

-- `q` matches a substring of code, url or title: one trigram index over the three, joined by
-- a newline that no code or url holds (and that `q` may not hold), serves LIKE '%q%'.
-- Codes and urls are ASCII, so lower() folds them the same way in every locale.
CREATE INDEX links_search_trgm ON links
    USING gin ((lower(code || E'\n' || url) || E'\n' || coalesce(title_folded, '')) gin_trgm_ops)
    WHERE deleted_at IS NULL;
CREATE INDEX links_tags ON links USING gin (tags) WHERE deleted_at IS NULL;
