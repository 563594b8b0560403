-- Shipments that left before 0002 recorded confirmations were confirmed (nothing ships
-- otherwise): say so, so that what the warehouse did stays consistent with the rule.
UPDATE shipments SET confirmed_at_ms = updated_at_ms
WHERE confirmed_at_ms IS NULL AND status IN ('SHIPPED', 'DELIVERED');
