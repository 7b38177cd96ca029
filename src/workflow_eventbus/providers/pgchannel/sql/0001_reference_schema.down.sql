-- Drops the reference tables and every message in them.
DROP TABLE IF EXISTS eventbus_event_deliveries;
DROP TABLE IF EXISTS eventbus_consumers;
DROP TABLE IF EXISTS eventbus_events;
DROP TABLE IF EXISTS eventbus_streams;
