-- The recommendations read model: built only from events (OrderConfirmed on orders.events,
-- ProductsViewed on catalog.views), so that replaying them into an empty store rebuilds it.
-- Every count is a sum of upserts, which do not depend on the order events arrive in.

-- Each order counted once, whichever message carried it.
CREATE TABLE rec_orders (
    order_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    placed_at_ms BIGINT NOT NULL
);

-- Popularity: orders and views per product per hour (the sliding window sums the last hours).
CREATE TABLE rec_popularity (
    hour BIGINT NOT NULL,
    product_id TEXT NOT NULL,
    orders BIGINT NOT NULL DEFAULT 0,
    views BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, product_id)
);

-- Co-purchases: orders holding both products, per day, both ways.
CREATE TABLE rec_pairs (
    day BIGINT NOT NULL,
    product_id TEXT NOT NULL,
    other_id TEXT NOT NULL,
    orders BIGINT NOT NULL,
    PRIMARY KEY (product_id, day, other_id)
);

-- What each user bought (orders holding the product) and viewed, and when last.
CREATE TABLE rec_history (
    user_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    orders BIGINT NOT NULL DEFAULT 0,
    last_at_ms BIGINT NOT NULL,
    PRIMARY KEY (user_id, product_id)
);

CREATE INDEX rec_history_recent ON rec_history (user_id, last_at_ms);
CREATE INDEX rec_history_age ON rec_history (last_at_ms);
CREATE INDEX rec_orders_age ON rec_orders (placed_at_ms);
CREATE INDEX rec_pairs_age ON rec_pairs (day);
