-- Back to the reference schema; the Go plugin's columns and rows are kept.
DROP TABLE IF EXISTS eventbus_msg_ids;
DROP INDEX IF EXISTS eventbus_event_deliveries_pending_idx;
ALTER TABLE eventbus_event_deliveries
    DROP CONSTRAINT IF EXISTS eventbus_event_deliveries_state_check,
    DROP COLUMN IF EXISTS lease_until,
    DROP COLUMN IF EXISTS state;
ALTER TABLE eventbus_consumers
    DROP COLUMN IF EXISTS updated_at,
    DROP COLUMN IF EXISTS dispatched,
    DROP COLUMN IF EXISTS backoff_ms,
    DROP COLUMN IF EXISTS max_ack_pending,
    DROP COLUMN IF EXISTS ack_wait_ms,
    DROP COLUMN IF EXISTS opt_start_time,
    DROP COLUMN IF EXISTS opt_start_seq,
    DROP COLUMN IF EXISTS deliver_policy;
ALTER TABLE eventbus_events DROP COLUMN IF EXISTS msg_id;
ALTER TABLE eventbus_streams
    DROP CONSTRAINT IF EXISTS eventbus_streams_retention_check,
    DROP COLUMN IF EXISTS updated_at,
    DROP COLUMN IF EXISTS ack_wait_ms,
    DROP COLUMN IF EXISTS duplicate_window_ms,
    DROP COLUMN IF EXISTS max_msg_size,
    DROP COLUMN IF EXISTS max_bytes,
    DROP COLUMN IF EXISTS max_msgs,
    DROP COLUMN IF EXISTS retention;
