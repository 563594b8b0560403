-- When a committed order's stock was put back on hand (its refund, before the parcel left);
-- NULL while it is out of stock for good. Set once: a second return finds it set.
ALTER TABLE holds ADD COLUMN returned_at_ms BIGINT;
