-- An email change waits for the new address's owner to confirm it: only the SHA-256 digest of
-- the token mailed there is kept, for a day at most. One pending change per user.
CREATE TABLE email_changes (
    digest TEXT PRIMARY KEY,
    user_id TEXT NOT NULL UNIQUE REFERENCES users (id),
    email TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
