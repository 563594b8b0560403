-- The latest orders of everyone, for the ops console (GET /admin/orders).
CREATE INDEX orders_recent ON orders (created_at_ms DESC, order_id DESC);
