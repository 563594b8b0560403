-- Relays in other processes LISTEN on `messaging_outbox`: each statement that inserts into the
-- outbox notifies it, delivered when its transaction commits (and collapsed into one
-- notification per transaction by PostgreSQL). A relay polls as well, so a lost notification
-- only delays a message.
CREATE FUNCTION messaging_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('messaging_outbox', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER messaging_outbox_notify AFTER INSERT ON messaging_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION messaging_outbox_notify();
