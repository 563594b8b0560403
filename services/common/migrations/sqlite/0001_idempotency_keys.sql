-- The kit's example table: responses remembered per Idempotency-Key.
CREATE TABLE idempotency_keys (
    key TEXT PRIMARY KEY NOT NULL,
    fingerprint TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
