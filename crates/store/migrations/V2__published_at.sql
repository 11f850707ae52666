-- The guard for published rows (docs/design.md, "Where each failure
-- is handled"): when a row's envelope was last confirmed by the broker. A row
-- still queued long after that (the broker lost its copy, or a consumer that
-- nobody reads holds it) is published again by the relay.
ALTER TABLE messages ADD COLUMN published_at timestamptz;
ALTER TABLE status_updates ADD COLUMN published_at timestamptz;

-- Rows published before this column existed count as published now.
UPDATE messages SET published_at = now() WHERE published AND state = 'queued';
UPDATE status_updates SET published_at = now() WHERE published AND state = 'queued';

-- The guard's scan: only published rows that are still queued (few, unless
-- the broker is behind), oldest publish first. A row marked by a kurir older
-- than this migration (during a rolling upgrade) has no published_at: it
-- counts as published long ago, so it comes first.
CREATE INDEX messages_republish_idx ON messages (published_at NULLS FIRST) WHERE state = 'queued' AND published;
CREATE INDEX status_updates_republish_idx ON status_updates (published_at NULLS FIRST) WHERE state = 'queued' AND published;
