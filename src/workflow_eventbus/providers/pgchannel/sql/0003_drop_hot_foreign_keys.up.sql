-- Foreign keys on the hot paths go: each checked row takes a row lock on the
-- row it references (the stream on every publish; the consumer and the event
-- on every lease), which measured 10-25% of publish and claim time. The
-- provider keeps what they guarded: a publish inserts only into a stream row it
-- finds, leases are written only for a consumer read under its lock, and the
-- retention sweep deletes leases whose event is gone (the cascade did that).
-- The Go plugin's queries do not depend on them.

ALTER TABLE eventbus_events DROP CONSTRAINT IF EXISTS eventbus_events_stream_name_fkey;
ALTER TABLE eventbus_event_deliveries
    DROP CONSTRAINT IF EXISTS eventbus_event_deliveries_consumer_fkey;
ALTER TABLE eventbus_event_deliveries
    DROP CONSTRAINT IF EXISTS eventbus_event_deliveries_event_id_fkey;
