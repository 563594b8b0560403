-- One payment per order: its authorisation, and what became of it. The provider is asked under
-- a key per operation (`<order_id>:authorize`, `:capture`, `:void`, `:refund`), so that asking
-- again after a lost answer cannot do it twice.
CREATE TABLE payments (
    order_id TEXT PRIMARY KEY,
    payment_id TEXT NOT NULL UNIQUE,
    amount_minor BIGINT NOT NULL CHECK (amount_minor >= 0),
    currency TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('AUTHORIZED', 'DECLINED', 'CAPTURED', 'VOIDED', 'REFUNDED')),
    -- The provider's reference of the authorisation.
    reference TEXT,
    -- Why it was declined or voided.
    reason TEXT,
    captured_minor BIGINT NOT NULL DEFAULT 0,
    refunded_minor BIGINT NOT NULL DEFAULT 0,
    authorized_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX payments_authorized ON payments (authorized_at_ms) WHERE status = 'AUTHORIZED';
