-- The saga steps a participant carried out (shop_messaging::saga::Steps), with the reply it
-- gave: a step's command sent again under a new id is answered with the same reply, and has no
-- second effect. Written in the transaction of the step's effect.
CREATE TABLE messaging_saga_steps (
    participant TEXT NOT NULL,
    saga_id TEXT NOT NULL,
    step TEXT NOT NULL,
    kind TEXT NOT NULL,
    version INTEGER NOT NULL,
    subject TEXT NOT NULL,
    key TEXT NOT NULL,
    -- The reply's body, JSON.
    body TEXT NOT NULL,
    done_at_ms BIGINT NOT NULL,
    PRIMARY KEY (participant, saga_id, step)
);
CREATE INDEX messaging_saga_steps_done ON messaging_saga_steps (done_at_ms);
