-- Visits as counts per link, UTC hour (hours since the epoch), dimension and value: storage
-- grows with distinct combinations, never with visits. Dimension 'total' holds the values
-- 'visits' and 'bots', the others ('referrer', 'country', 'browser', 'os', 'device') count
-- human visits only.
CREATE TABLE visit_counts (
    link_id bigint NOT NULL REFERENCES links (id),
    hour bigint NOT NULL,
    dimension text NOT NULL,
    value text NOT NULL,
    count bigint NOT NULL,
    PRIMARY KEY (link_id, hour, dimension, value)
);

-- The retention deletes by hour across all links.
CREATE INDEX visit_counts_by_hour ON visit_counts (hour);
