-- Responses remembered per Idempotency-Key (shop_common::idempotency). The kit's migrations
-- are recorded in `_kit_migrations`, apart from the service's own.
CREATE TABLE kit_idempotency (
    -- SHA-256 of the key and what it is scoped to (method, target, credentials), in hex.
    id TEXT PRIMARY KEY NOT NULL,
    -- SHA-256 of the request it was first used with, in hex.
    fingerprint TEXT NOT NULL,
    -- The response, sealed with a key derived from the request (NULL while in progress).
    response BLOB,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX kit_idempotency_created ON kit_idempotency (created_at_ms);
