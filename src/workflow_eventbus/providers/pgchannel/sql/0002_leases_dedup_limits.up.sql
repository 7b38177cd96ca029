-- Per-message acknowledgement with leases, NATS-like stream limits, consumer
-- settings and msg_id deduplication. Columns are only added: the Go plugin
-- keeps working on the same tables.

ALTER TABLE eventbus_streams
    ADD COLUMN IF NOT EXISTS retention           TEXT        NOT NULL DEFAULT 'limits',
    ADD COLUMN IF NOT EXISTS max_msgs            BIGINT      NOT NULL DEFAULT -1,
    ADD COLUMN IF NOT EXISTS max_bytes           BIGINT      NOT NULL DEFAULT -1,
    ADD COLUMN IF NOT EXISTS max_msg_size        INTEGER     NOT NULL DEFAULT -1,
    ADD COLUMN IF NOT EXISTS duplicate_window_ms BIGINT      NOT NULL DEFAULT 120000,
    ADD COLUMN IF NOT EXISTS ack_wait_ms         BIGINT      NULL,
    ADD COLUMN IF NOT EXISTS updated_at          TIMESTAMPTZ NOT NULL DEFAULT now();
ALTER TABLE eventbus_streams
    ADD CONSTRAINT eventbus_streams_retention_check
        CHECK (retention IN ('limits', 'interest', 'workqueue'));

-- The msg_id a publisher set (NULL when none).
ALTER TABLE eventbus_events ADD COLUMN IF NOT EXISTS msg_id TEXT NULL;

-- position stays the Go meaning (every event up to it is settled for this
-- consumer); dispatched is the highest event ever handed out for the first time.
-- deliver_policy NULL marks a consumer the Go plugin created (it starts at 0).
ALTER TABLE eventbus_consumers
    ADD COLUMN IF NOT EXISTS deliver_policy  TEXT        NULL,
    ADD COLUMN IF NOT EXISTS opt_start_seq   BIGINT      NULL,
    ADD COLUMN IF NOT EXISTS opt_start_time  TIMESTAMPTZ NULL,
    ADD COLUMN IF NOT EXISTS ack_wait_ms     BIGINT      NULL,
    ADD COLUMN IF NOT EXISTS max_ack_pending INTEGER     NOT NULL DEFAULT -1,
    ADD COLUMN IF NOT EXISTS backoff_ms      BIGINT[]    NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS dispatched      BIGINT      NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS updated_at      TIMESTAMPTZ NOT NULL DEFAULT now();
UPDATE eventbus_consumers SET dispatched = position WHERE dispatched < position;

-- A delivery row is a lease: pending until acked, termed or exhausted; while
-- lease_until is in the future no other member of the durable may take it.
ALTER TABLE eventbus_event_deliveries
    ADD COLUMN IF NOT EXISTS state       TEXT        NOT NULL DEFAULT 'pending',
    ADD COLUMN IF NOT EXISTS lease_until TIMESTAMPTZ NULL;
ALTER TABLE eventbus_event_deliveries
    ADD CONSTRAINT eventbus_event_deliveries_state_check
        CHECK (state IN ('pending', 'acked', 'termed', 'exhausted'));
-- Rows the Go plugin left behind at or below the consumer position are settled.
UPDATE eventbus_event_deliveries AS d
   SET state = 'acked'
  FROM eventbus_consumers AS c
 WHERE c.stream_name = d.stream_name AND c.name = d.consumer_name AND d.event_id <= c.position;
CREATE INDEX IF NOT EXISTS eventbus_event_deliveries_pending_idx
    ON eventbus_event_deliveries (stream_name, consumer_name, event_id)
    WHERE state = 'pending';

CREATE TABLE IF NOT EXISTS eventbus_msg_ids (
    stream_name TEXT        NOT NULL,
    msg_id      TEXT        NOT NULL,
    event_id    BIGINT      NULL,
    seen_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT eventbus_msg_ids_pkey PRIMARY KEY (stream_name, msg_id),
    CONSTRAINT eventbus_msg_ids_stream_name_fkey FOREIGN KEY (stream_name)
        REFERENCES eventbus_streams (name) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS eventbus_msg_ids_seen_at_idx ON eventbus_msg_ids (seen_at);
