-- The analytics read model: built only from events, each counted in the minute it happened
-- (the event's own time, not when it was handled), so that a replay rebuilds the same figures.

-- What happened per minute: orders_placed, revenue_minor:EUR, outcome:OUT_OF_STOCK, …
CREATE TABLE analytics_counts (
    minute BIGINT NOT NULL,
    metric TEXT NOT NULL,
    value BIGINT NOT NULL,
    PRIMARY KEY (minute, metric)
);

-- The same since the beginning, never pruned: the Prometheus counters.
CREATE TABLE analytics_totals (
    metric TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);

-- Each order's checkout once: how it ended and how long from submit to there.
CREATE TABLE analytics_checkouts (
    order_id TEXT PRIMARY KEY,
    minute BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    latency_ms BIGINT NOT NULL
);

-- What happens to an order once, counted once, whatever carried it: `placed:<order>`,
-- `payment:authorized:<order>`, `cancelled:<order>`, `shipped:<order>`… (a saga step's reply
-- is sent again, under another message id, when the orchestrator asks again).
CREATE TABLE analytics_claims (
    claim TEXT PRIMARY KEY,
    minute BIGINT NOT NULL
);

CREATE INDEX analytics_checkouts_minute ON analytics_checkouts (minute);
CREATE INDEX analytics_claims_minute ON analytics_claims (minute);
