-- Stock per product (the catalog's product id is the SKU). Available = on_hand - reserved, which
-- the CHECKs keep from going negative.
CREATE TABLE stock (
    sku TEXT PRIMARY KEY,
    on_hand BIGINT NOT NULL CHECK (on_hand >= 0),
    reserved BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0 AND reserved <= on_hand),
    updated_at_ms BIGINT NOT NULL
);
-- One hold per order: what a checkout reserved, until it is committed, released or expired.
CREATE TABLE holds (
    order_id TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('RESERVED', 'COMMITTED', 'RELEASED', 'EXPIRED')),
    expires_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX holds_expiring ON holds (expires_at_ms) WHERE status = 'RESERVED';
CREATE TABLE hold_lines (
    order_id TEXT NOT NULL REFERENCES holds (order_id),
    sku TEXT NOT NULL,
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, sku)
);
-- Every change of a stock row, as deltas: per SKU, the sums are on_hand and reserved.
CREATE TABLE stock_ledger (
    entry BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sku TEXT NOT NULL,
    on_hand_delta BIGINT NOT NULL,
    reserved_delta BIGINT NOT NULL,
    reason TEXT NOT NULL,
    order_id TEXT,
    at_ms BIGINT NOT NULL
);
CREATE INDEX stock_ledger_sku ON stock_ledger (sku);
