-- Orders and their checkout sagas. A saga moves by a conditional UPDATE on `version`, in the
-- transaction that writes its next command to the outbox: a crash at any point resumes from the
-- last committed step, and two movers of one order (a reply and the deadline scanner) cannot
-- both apply.
CREATE TABLE orders (
    order_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status TEXT NOT NULL,
    -- The step whose answer is awaited (NULL once settled), and the steps after it.
    step TEXT,
    plan TEXT NOT NULL DEFAULT '',
    reason TEXT,
    -- How often the step was sent again, and when the scanner next looks (NULL: never).
    attempts INTEGER NOT NULL DEFAULT 0,
    due_at_ms BIGINT,
    -- Past it, a saga that has not reached the pivot is undone.
    deadline_ms BIGINT NOT NULL,
    total_minor BIGINT NOT NULL CHECK (total_minor > 0),
    currency TEXT NOT NULL,
    captured_minor BIGINT NOT NULL DEFAULT 0,
    refunded_minor BIGINT NOT NULL DEFAULT 0,
    -- The card, until its authorisation is asked (then blank); its last four digits.
    card TEXT NOT NULL,
    card_last4 TEXT NOT NULL,
    address TEXT NOT NULL,
    items INTEGER NOT NULL,
    version BIGINT NOT NULL DEFAULT 0,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    UNIQUE (user_id, idempotency_key)
);
CREATE INDEX orders_due ON orders (due_at_ms) WHERE due_at_ms IS NOT NULL;
CREATE INDEX orders_by_user ON orders (user_id, created_at_ms DESC, order_id DESC);

CREATE TABLE order_lines (
    order_id TEXT NOT NULL REFERENCES orders (order_id),
    line_no INTEGER NOT NULL,
    product_id TEXT NOT NULL,
    name TEXT NOT NULL,
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    unit_price_minor BIGINT NOT NULL CHECK (unit_price_minor >= 0),
    PRIMARY KEY (order_id, line_no)
);

-- What happened to each order, in order.
CREATE TABLE order_history (
    order_id TEXT NOT NULL REFERENCES orders (order_id),
    seq INTEGER NOT NULL,
    at_ms BIGINT NOT NULL,
    status TEXT NOT NULL,
    step TEXT,
    note TEXT NOT NULL,
    PRIMARY KEY (order_id, seq)
);
