-- The local transport (shop_messaging::local): a durable log of messages with durable
-- consumers and dead letters, in a database of its own, for the embedded default. Recorded in
-- `_messaging_local_migrations`.
CREATE TABLE bus_messages (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The broker's id (the outbox's message id): a message is stored once.
    id TEXT NOT NULL UNIQUE,
    subject TEXT NOT NULL,
    headers TEXT NOT NULL,
    payload BYTEA NOT NULL,
    stored_at_ms BIGINT NOT NULL
);
CREATE TABLE bus_consumers (
    name TEXT PRIMARY KEY,
    -- The subject filters, a JSON array.
    subjects TEXT NOT NULL,
    max_deliver INTEGER NOT NULL,
    ack_wait_ms BIGINT NOT NULL,
    -- Every message up to this seq has been looked at for this consumer.
    cursor BIGINT NOT NULL
);
-- Messages delivered and not yet settled, or waiting to be delivered again.
CREATE TABLE bus_deliveries (
    consumer TEXT NOT NULL REFERENCES bus_consumers (name) ON DELETE CASCADE,
    seq BIGINT NOT NULL REFERENCES bus_messages (seq),
    delivered INTEGER NOT NULL,
    -- When it is (re)delivered next, unless settled first.
    due_at_ms BIGINT NOT NULL,
    last_error TEXT,
    PRIMARY KEY (consumer, seq)
);
CREATE INDEX bus_deliveries_due ON bus_deliveries (consumer, due_at_ms);
CREATE TABLE bus_dead_letters (
    dead_seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer TEXT NOT NULL,
    seq BIGINT NOT NULL REFERENCES bus_messages (seq),
    reason TEXT NOT NULL,
    delivered INTEGER NOT NULL,
    dead_at_ms BIGINT NOT NULL,
    UNIQUE (consumer, seq)
);
