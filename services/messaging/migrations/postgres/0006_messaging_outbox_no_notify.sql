-- Drops the trigger of 0005. A NOTIFY makes its transaction take PostgreSQL's notify lock, one
-- for the whole cluster, from the commit's start to its end: every transaction that enqueued
-- committed one after another, WAL flush included. A relay is woken by the commits of its own
-- process, retries soon when another replica's relay holds the turn, and polls for the rest.
DROP TRIGGER IF EXISTS messaging_outbox_notify ON messaging_outbox;
DROP FUNCTION IF EXISTS messaging_outbox_notify();
