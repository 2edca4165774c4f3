-- Titles and tags. Tags are a JSON array of lower-case strings. title_folded is the title
-- in lower case as Python folds it, since SQLite's own LIKE folds ASCII letters only.
ALTER TABLE links ADD COLUMN title TEXT;
ALTER TABLE links ADD COLUMN title_folded TEXT;
ALTER TABLE links ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
