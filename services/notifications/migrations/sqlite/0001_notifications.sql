-- Who is told: the e-mail address and name of each account, kept from users.events.
CREATE TABLE recipients (
    user_id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    name TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
-- Whose order it is: shipping's events name only the order.
CREATE TABLE order_owners (
    order_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
-- Which channels a user wants (no row: the defaults).
CREATE TABLE preferences (
    user_id TEXT PRIMARY KEY,
    email BOOLEAN NOT NULL,
    sms BOOLEAN NOT NULL,
    push BOOLEAN NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
-- One row per message and channel, rendered when the event arrived. The row is the truth: the
-- channel queue carries only its id, and a worker claims the row (QUEUED -> SENDING, under a
-- lease and a token of its own) before sending, so a message is sent once however often its id
-- is delivered. A failed attempt puts it back to QUEUED until next_attempt_at_ms (the back-off),
-- or makes it DEAD; enqueued_at_ms says when it was last handed to its queue (NULL: not yet).
CREATE TABLE notifications (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    channel TEXT NOT NULL CHECK (channel IN ('email', 'sms', 'push')),
    kind TEXT NOT NULL,
    order_id TEXT,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('QUEUED', 'SENDING', 'SENT', 'DEAD')),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    enqueued_at_ms BIGINT,
    next_attempt_at_ms BIGINT NOT NULL DEFAULT 0,
    claim_token TEXT,
    lease_until_ms BIGINT NOT NULL DEFAULT 0,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    sent_at_ms BIGINT
);
CREATE INDEX notifications_by_user ON notifications (user_id, created_at_ms);
CREATE INDEX notifications_by_status ON notifications (status, next_attempt_at_ms);
