-- A message the broker refused for what it is (too large, say) is set aside, not retried
-- forever in front of every message after it: `failed_at_ms` says when, `last_error` why.
-- `Outbox::retry` puts it back.
ALTER TABLE messaging_outbox ADD COLUMN failed_at_ms BIGINT;
-- The relay reads the oldest unpublished messages in `seq` order: an index on exactly those.
DROP INDEX messaging_outbox_unpublished;
CREATE INDEX messaging_outbox_pending ON messaging_outbox (seq)
    WHERE published_at_ms IS NULL AND failed_at_ms IS NULL;
CREATE INDEX messaging_outbox_failed ON messaging_outbox (seq) WHERE failed_at_ms IS NOT NULL;
