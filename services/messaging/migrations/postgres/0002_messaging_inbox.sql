-- The inbox (shop_messaging::Inbox): the messages each consumer has had its effect for,
-- written in the same transaction as that effect, so that a redelivered message has none.
CREATE TABLE messaging_inbox (
    consumer TEXT NOT NULL,
    message_id TEXT NOT NULL,
    received_at_ms BIGINT NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX messaging_inbox_received ON messaging_inbox (received_at_ms);
