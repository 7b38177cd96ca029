-- Back to the reference schema's constraints. Leases without their event or
-- consumer mean nothing and are deleted first; events of a stream that no
-- longer exists are kept, so that constraint is added without checking them.

DELETE FROM eventbus_event_deliveries d
 WHERE NOT EXISTS (SELECT 1 FROM eventbus_events e WHERE e.id = d.event_id)
    OR NOT EXISTS (SELECT 1 FROM eventbus_consumers c
                    WHERE c.stream_name = d.stream_name AND c.name = d.consumer_name);
ALTER TABLE eventbus_event_deliveries
    ADD CONSTRAINT eventbus_event_deliveries_consumer_fkey FOREIGN KEY (stream_name, consumer_name)
        REFERENCES eventbus_consumers (stream_name, name) ON DELETE RESTRICT;
ALTER TABLE eventbus_event_deliveries
    ADD CONSTRAINT eventbus_event_deliveries_event_id_fkey FOREIGN KEY (event_id)
        REFERENCES eventbus_events (id) ON DELETE CASCADE;
ALTER TABLE eventbus_events
    ADD CONSTRAINT eventbus_events_stream_name_fkey FOREIGN KEY (stream_name)
        REFERENCES eventbus_streams (name) ON DELETE RESTRICT NOT VALID;
