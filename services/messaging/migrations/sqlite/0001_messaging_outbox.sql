-- The transactional outbox (shop_messaging::Outbox): a message is written in the transaction
-- of the state change it announces, and a relay publishes it after the commit. Recorded in
-- `_messaging_migrations`, apart from the service's and the kit's own.
CREATE TABLE messaging_outbox (
    -- Enqueue order: the relay publishes a key's messages in this order.
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The message id (a UUIDv7), sent as Nats-Msg-Id so that the broker drops a republished one.
    id TEXT NOT NULL UNIQUE,
    subject TEXT NOT NULL,
    kind TEXT NOT NULL,
    version INTEGER NOT NULL,
    -- The ordering key (the aggregate's id).
    key TEXT NOT NULL,
    -- Headers as a JSON object of strings (the trace context).
    headers TEXT NOT NULL,
    -- The envelope, JSON.
    payload BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL,
    -- NULL until the broker has it.
    published_at_ms INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX messaging_outbox_unpublished ON messaging_outbox (key, seq) WHERE published_at_ms IS NULL;
CREATE INDEX messaging_outbox_published ON messaging_outbox (published_at_ms) WHERE published_at_ms IS NOT NULL;
