-- The whole address the parcel goes to (the warehouse prints it), and when the order was
-- confirmed (its payment captured): before that the warehouse may not ship it. Shipments booked
-- before this migration keep empty address lines.
ALTER TABLE shipments ADD COLUMN recipient TEXT NOT NULL DEFAULT '';
ALTER TABLE shipments ADD COLUMN line1 TEXT NOT NULL DEFAULT '';
ALTER TABLE shipments ADD COLUMN city TEXT NOT NULL DEFAULT '';
ALTER TABLE shipments ADD COLUMN confirmed_at_ms BIGINT;
