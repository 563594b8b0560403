-- One shipment per order. A shipment leaves CREATED by a conditional UPDATE of its status, so a
-- cancel and a dispatch of one order cannot both apply.
CREATE TABLE shipments (
    order_id TEXT PRIMARY KEY,
    shipment_id TEXT NOT NULL UNIQUE,
    tracking_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('CREATED', 'REJECTED', 'CANCELLED', 'SHIPPED', 'DELIVERED')),
    cost_minor BIGINT NOT NULL CHECK (cost_minor >= 0),
    country TEXT NOT NULL,
    postcode TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
