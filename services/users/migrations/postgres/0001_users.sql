-- Users, their refresh tokens, and the keys that sign their access tokens.
-- Times are seconds since the Unix epoch.
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Only the SHA-256 digest of a refresh token is stored.
CREATE TABLE refresh_tokens (
    digest TEXT PRIMARY KEY,
    family TEXT NOT NULL,
    subject TEXT NOT NULL REFERENCES users (id),
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    revoked BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);

-- The current key has no retire_at; rotated keys are kept until retire_at.
CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    algorithm TEXT NOT NULL,
    pkcs8 BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    retire_at BIGINT
);
