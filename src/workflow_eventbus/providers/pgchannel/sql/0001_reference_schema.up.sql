-- The four tables of the Go plugin's reference schema, created only when absent,
-- so a database the Go plugin already uses is adopted as it is. Runs with
-- search_path set to the target schema.

CREATE TABLE IF NOT EXISTS eventbus_streams (
    name            TEXT        NOT NULL,
    subjects        TEXT[]      NOT NULL,
    max_age_seconds BIGINT      NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT eventbus_streams_pkey PRIMARY KEY (name)
);

CREATE TABLE IF NOT EXISTS eventbus_events (
    id             BIGSERIAL   NOT NULL,
    stream_name    TEXT        NOT NULL,
    subject        TEXT        NOT NULL,
    headers        JSONB       NOT NULL DEFAULT '{}'::jsonb,
    payload        BYTEA       NOT NULL,
    correlation_id TEXT        NULL,
    ts             TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT eventbus_events_pkey PRIMARY KEY (id),
    CONSTRAINT eventbus_events_stream_name_fkey FOREIGN KEY (stream_name)
        REFERENCES eventbus_streams (name) ON DELETE RESTRICT
);

CREATE INDEX IF NOT EXISTS eventbus_events_stream_id_idx ON eventbus_events (stream_name, id);
CREATE INDEX IF NOT EXISTS eventbus_events_subject_idx ON eventbus_events (subject);

CREATE TABLE IF NOT EXISTS eventbus_consumers (
    stream_name    TEXT        NOT NULL,
    name           TEXT        NOT NULL,
    position       BIGINT      NOT NULL DEFAULT 0,
    filter_subject TEXT        NULL,
    ack_policy     TEXT        NOT NULL DEFAULT 'explicit',
    max_deliver    INTEGER     NOT NULL DEFAULT 5,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT eventbus_consumers_pkey PRIMARY KEY (stream_name, name),
    CONSTRAINT eventbus_consumers_stream_name_fkey FOREIGN KEY (stream_name)
        REFERENCES eventbus_streams (name) ON DELETE RESTRICT
);

CREATE TABLE IF NOT EXISTS eventbus_event_deliveries (
    stream_name        TEXT        NOT NULL,
    consumer_name      TEXT        NOT NULL,
    event_id           BIGINT      NOT NULL,
    delivery_count     INTEGER     NOT NULL DEFAULT 1,
    first_delivered_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_delivered_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT eventbus_event_deliveries_pkey PRIMARY KEY (stream_name, consumer_name, event_id),
    CONSTRAINT eventbus_event_deliveries_consumer_fkey FOREIGN KEY (stream_name, consumer_name)
        REFERENCES eventbus_consumers (stream_name, name) ON DELETE RESTRICT,
    CONSTRAINT eventbus_event_deliveries_event_id_fkey FOREIGN KEY (event_id)
        REFERENCES eventbus_events (id) ON DELETE CASCADE
);
