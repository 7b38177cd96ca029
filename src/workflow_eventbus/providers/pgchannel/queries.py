"""Every SQL statement of the provider, parameterised, with schema-qualified tables.

Templates name tables as ``{streams}``, ``{events}``, ``{consumers}``,
``{deliveries}`` and ``{msg_ids}``; :class:`Queries` fills them with quoted
``schema.table`` identifiers once per provider. Values always travel as
parameters (``%(name)s``), never as text.
"""

from __future__ import annotations

from psycopg import sql

from .locks import PUBLISH_CLASS

TABLES = {
    "streams": "eventbus_streams",
    "events": "eventbus_events",
    "consumers": "eventbus_consumers",
    "deliveries": "eventbus_event_deliveries",
    "msg_ids": "eventbus_msg_ids",
}

# Lease length of a delivery whose count is :n: the consumer's backoff step for
# that count (the last step repeats), else its ack wait.
_LEASE = """make_interval(secs => CASE
    WHEN cardinality(%(backoff)s::float8[]) = 0 THEN %(ack_wait)s::float8
    ELSE (%(backoff)s::float8[])[least({n}, cardinality(%(backoff)s::float8[]))] END)"""

LIST_STREAMS = "SELECT name, subjects, max_msg_size FROM {streams} ORDER BY name"

UPSERT_STREAM = """
INSERT INTO {streams} AS s (name, subjects, max_age_seconds, retention, max_msgs, max_bytes,
                            max_msg_size, duplicate_window_ms, ack_wait_ms)
VALUES (%(name)s, %(subjects)s, %(max_age)s, %(retention)s, %(max_msgs)s, %(max_bytes)s,
        %(max_msg_size)s, %(window_ms)s, %(ack_wait_ms)s)
ON CONFLICT (name) DO UPDATE SET
    subjects = EXCLUDED.subjects, max_age_seconds = EXCLUDED.max_age_seconds,
    max_msgs = EXCLUDED.max_msgs, max_bytes = EXCLUDED.max_bytes,
    max_msg_size = EXCLUDED.max_msg_size, duplicate_window_ms = EXCLUDED.duplicate_window_ms,
    ack_wait_ms = EXCLUDED.ack_wait_ms, updated_at = now()
"""

STREAM_RETENTION = "SELECT retention FROM {streams} WHERE name = %(name)s"

OTHER_STREAM_SUBJECTS = "SELECT name, subjects FROM {streams} WHERE name <> %(name)s"

GET_CONSUMER = """
SELECT deliver_policy, opt_start_seq, opt_start_time, ack_policy
  FROM {consumers} WHERE stream_name = %(stream)s AND name = %(name)s
"""

INSERT_CONSUMER = """
INSERT INTO {consumers} (stream_name, name, position, dispatched, filter_subject, ack_policy,
                         max_deliver, deliver_policy, opt_start_seq, opt_start_time,
                         ack_wait_ms, max_ack_pending, backoff_ms)
VALUES (%(stream)s, %(name)s, %(start)s, %(start)s, %(filter)s, %(ack_policy)s, %(max_deliver)s,
        %(deliver_policy)s, %(opt_start_seq)s, %(opt_start_time)s, %(ack_wait_ms)s,
        %(max_ack_pending)s, %(backoff_ms)s)
ON CONFLICT (stream_name, name) DO NOTHING
"""

UPDATE_CONSUMER = """
UPDATE {consumers} SET filter_subject = %(filter)s, ack_policy = %(ack_policy)s,
       max_deliver = %(max_deliver)s, deliver_policy = %(deliver_policy)s,
       opt_start_seq = %(opt_start_seq)s, opt_start_time = %(opt_start_time)s,
       ack_wait_ms = %(ack_wait_ms)s, max_ack_pending = %(max_ack_pending)s,
       backoff_ms = %(backoff_ms)s, updated_at = now()
 WHERE stream_name = %(stream)s AND name = %(name)s
"""

# Where a new consumer starts (its position: everything up to it is skipped).
START_LAST_ID = "SELECT coalesce(max(id), 0) FROM {events} WHERE stream_name = %(stream)s"
START_LAST_MATCH = """
SELECT coalesce(max(id) - 1, 0) FROM {events}
 WHERE stream_name = %(stream)s AND (%(regex)s = '' OR subject ~ %(regex)s)
"""
START_BY_TIME = """
SELECT coalesce(min(id) - 1, (SELECT coalesce(max(id), 0) FROM {events}
                               WHERE stream_name = %(stream)s))
  FROM {events} WHERE stream_name = %(stream)s AND ts >= %(time)s
"""

# Publishing: publishers of one stream take its advisory lock (held to commit)
# before the insert draws an id, so event ids of a stream become visible in id
# order and a consumer cursor never skips one. The stream name comes from the
# provider's view of the streams table (at most STREAM_CACHE_TTL old): looking
# the row up here cost 5% of a publish.
_PUBLISH_LOCK = f"pg_advisory_xact_lock({PUBLISH_CLASS}, %(lock_key)s)"

PUBLISH = (
    """
WITH l AS (SELECT """
    + _PUBLISH_LOCK
    + """),
ins AS (
    INSERT INTO {events} (stream_name, subject, headers, payload, correlation_id, msg_id)
    SELECT %(stream)s, %(subject)s, coalesce(%(headers)s::jsonb, '{{}}'), %(payload)s, %(corr)s,
           %(msg_id)s FROM l
    RETURNING id, ts)
SELECT id, ts, pg_notify(%(channel)s, id::text) FROM ins
"""
)

LOCK_STREAM = (
    "SELECT duplicate_window_ms, " + _PUBLISH_LOCK + " FROM {streams} WHERE name = %(stream)s"
)

# Claims the msg_id unless it was seen within the window; no row back = duplicate.
CLAIM_MSG_ID = """
INSERT INTO {msg_ids} AS m (stream_name, msg_id, event_id, seen_at)
VALUES (%(stream)s, %(msg_id)s, NULL, now())
ON CONFLICT (stream_name, msg_id) DO UPDATE SET event_id = NULL, seen_at = now()
 WHERE m.seen_at < now() - make_interval(secs => %(window)s::float8)
RETURNING 1
"""

ORIGINAL_OF_MSG_ID = """
SELECT m.event_id, coalesce(e.ts, m.seen_at) FROM {msg_ids} m
  LEFT JOIN {events} e ON e.id = m.event_id
 WHERE m.stream_name = %(stream)s AND m.msg_id = %(msg_id)s
"""

SET_MSG_ID_EVENT = """
UPDATE {msg_ids} SET event_id = %(id)s WHERE stream_name = %(stream)s AND msg_id = %(msg_id)s
"""

# ---- claiming (one transaction, under the consumer's advisory lock, pipelined) ----

# Bitmap scans are off for the claim: with statistics that lag a fast-growing
# stream the planner otherwise reads every event past the cursor and sorts them
# (measured 5 ms per fetch of 100 at 13k waiting events), where walking the
# (stream_name, id) index stops after the first hundred.
CLAIM_LOCK = """
SELECT set_config('lock_timeout', %(lock_timeout)s, true),
       set_config('enable_bitmapscan', 'off', true),
       pg_advisory_xact_lock(%(key)s)
"""

# Runs after the lock statement, so it sees what the previous holder committed.
# active: leases still running (max_ack_pending); stream_max: the newest event.
CONSUMER_STATE = """
SELECT c.position, c.dispatched, coalesce(c.filter_subject, ''), c.max_deliver, c.ack_policy,
       coalesce(c.ack_wait_ms, s.ack_wait_ms, 30000), c.max_ack_pending, c.backoff_ms,
       s.max_age_seconds,
       (SELECT count(*) FROM {deliveries} d
         WHERE d.stream_name = c.stream_name AND d.consumer_name = c.name
           AND d.state = 'pending' AND d.event_id > c.position AND d.lease_until > now()),
       (SELECT coalesce(max(e.id), 0) FROM {events} e WHERE e.stream_name = c.stream_name)
  FROM {consumers} c JOIN {streams} s ON s.name = c.stream_name
 WHERE c.stream_name = %(stream)s AND c.name = %(consumer)s
"""

MARK_EXHAUSTED = """
UPDATE {deliveries} SET state = 'exhausted'
 WHERE stream_name = %(stream)s AND consumer_name = %(consumer)s AND state = 'pending'
   AND event_id > %(position)s AND coalesce(lease_until, '-infinity') <= now()
   AND delivery_count >= %(max_deliver)s
"""

# Due redeliveries (a row being settled right now is skipped) and fresh events
# past the cursor; the second column tells them apart.
PICK = """
WITH due AS (
    SELECT event_id AS id FROM {deliveries}
     WHERE stream_name = %(stream)s AND consumer_name = %(consumer)s AND state = 'pending'
       AND event_id > %(position)s AND coalesce(lease_until, '-infinity') <= now()
     ORDER BY event_id LIMIT %(limit)s
     FOR UPDATE SKIP LOCKED),
fresh AS (
    SELECT e.id FROM {events} e
     WHERE e.stream_name = %(stream)s AND e.id > %(cursor)s
{optional}       AND NOT EXISTS (SELECT 1 FROM {deliveries} d
                        WHERE d.stream_name = e.stream_name AND d.consumer_name = %(consumer)s
                          AND d.event_id = e.id)
     ORDER BY e.id LIMIT %(limit)s)
SELECT id, true FROM due UNION ALL SELECT id, false FROM fresh
"""

# With a subject filter or max_age: planned with the actual values every time (a
# cached generic plan of the optional conditions was measured 50x slower). Without
# either, the plain form is prepared once per connection like every other statement.
PICK_FILTERED = PICK.replace(
    "{optional}",
    """       AND (%(regex)s = '' OR e.subject ~ %(regex)s)
       AND (%(max_age)s::bigint IS NULL OR %(max_age)s::bigint <= 0
            OR e.ts >= now() - make_interval(secs => %(max_age)s::float8))
""",
)
PICK = PICK.replace("{optional}", "")

# Leases: a due redelivery updates its (locked) row, a fresh event gets a new row
# (the pick saw none, under the consumer lock): no speculative upsert per row.
DELIVER = (
    """
WITH re AS (
    UPDATE {deliveries} d SET
        delivery_count = d.delivery_count + 1, last_delivered_at = now(), state = %(state)s,
        lease_until = now() + """
    + _LEASE.replace("{n}", "d.delivery_count + 1")
    + """
     WHERE d.stream_name = %(stream)s AND d.consumer_name = %(consumer)s
       AND d.event_id = ANY(%(due)s::bigint[])
    RETURNING d.event_id, d.delivery_count),
ins AS (
    INSERT INTO {deliveries} (stream_name, consumer_name, event_id, delivery_count,
                              first_delivered_at, last_delivered_at, state, lease_until)
    SELECT %(stream)s, %(consumer)s, ids.id, 1, now(), now(), %(state)s, now() + """
    + _LEASE.replace("{n}", "1")
    + """
      FROM unnest(%(fresh)s::bigint[]) AS ids(id)
    RETURNING event_id, delivery_count),
up AS (SELECT * FROM re UNION ALL SELECT * FROM ins)
SELECT e.id, e.subject, e.headers, e.payload, coalesce(e.correlation_id, ''), e.ts,
       up.delivery_count
  FROM up JOIN {events} e ON e.id = up.event_id
 ORDER BY e.id
"""
)

# Moves the first-delivery cursor and the ack floor (position, the Go column):
# the floor is just below the oldest pending delivery, or the cursor. Rows at or
# below the new floor are settled: they are deleted.
ADVANCE = """
WITH adv AS (
    UPDATE {consumers} c SET
        dispatched = greatest(c.dispatched, c.position, %(cursor)s),
        position = greatest(c.position, coalesce(
            (SELECT min(d.event_id) - 1 FROM {deliveries} d
              WHERE d.stream_name = c.stream_name AND d.consumer_name = c.name
                AND d.state = 'pending' AND d.event_id > c.position),
            greatest(c.dispatched, c.position, %(cursor)s)))
     WHERE c.stream_name = %(stream)s AND c.name = %(consumer)s
    RETURNING position),
forget AS (
    DELETE FROM {deliveries}
     WHERE stream_name = %(stream)s AND consumer_name = %(consumer)s
       AND event_id > %(position)s AND event_id <= (SELECT position FROM adv))
SELECT position FROM adv
"""

# Seconds until the earliest running lease ends; runs after ADVANCE (reads its floor).
NEXT_DUE = """
SELECT extract(epoch FROM min(d.lease_until) - now()) FROM {deliveries} d
 WHERE d.stream_name = %(stream)s AND d.consumer_name = %(consumer)s AND d.state = 'pending'
   AND d.event_id > (SELECT position FROM {consumers}
                      WHERE stream_name = %(stream)s AND name = %(consumer)s)
   AND d.delivery_count < %(max_deliver)s
"""

# ---- settling ----

_TOKENS = "unnest(%(ids)s::bigint[], %(gens)s::int[]) AS t(id, gen)"

# ack deletes the lease row: a settled delivery at or below the cursor needs no
# row (the cursor already excludes it from fresh picks), and a delete writes no
# new row version or index entry. term keeps it, marked termed.
_SETTLED = """
     WHERE d.stream_name = %(stream)s AND d.consumer_name = %(consumer)s AND d.state = 'pending'
       AND (d.event_id IN (SELECT id FROM t)
            OR (%(is_ack)s AND (SELECT ack_policy FROM pol) = 'all'
                AND d.event_id <= (SELECT max(id) FROM t)))
    RETURNING d.event_id),"""

_SETTLE_TAIL = """
gone AS (
    DELETE FROM {events} e USING {streams} s
     WHERE %(is_ack)s AND s.name = %(stream)s AND s.retention = 'workqueue'
       AND e.stream_name = s.name AND e.id IN (SELECT event_id FROM done)
    RETURNING e.id)
SELECT (SELECT count(*) FROM done), (SELECT count(*) FROM pol), (SELECT count(*) FROM gone)
"""

_SETTLE_HEAD = (
    "WITH t AS (SELECT * FROM "
    + _TOKENS
    + """),
pol AS (SELECT ack_policy FROM {consumers} WHERE stream_name = %(stream)s AND name = %(consumer)s),
"""
)

ACK = _SETTLE_HEAD + "done AS (DELETE FROM {deliveries} d" + _SETTLED + _SETTLE_TAIL

TERM = (
    _SETTLE_HEAD
    + "done AS (UPDATE {deliveries} d SET state = 'termed', lease_until = NULL"
    + _SETTLED
    + _SETTLE_TAIL
)

NAK = (
    """
WITH t AS (SELECT * FROM """
    + _TOKENS
    + """),
done AS (
    UPDATE {deliveries} d SET lease_until = now() + make_interval(secs => %(delay)s::float8)
      FROM t
     WHERE d.stream_name = %(stream)s AND d.consumer_name = %(consumer)s AND d.state = 'pending'
       AND d.event_id = t.id AND (t.gen IS NULL OR d.delivery_count = t.gen)
    RETURNING d.event_id)
SELECT (SELECT count(*) FROM done), pg_notify(%(channel)s, '')
"""
)

IN_PROGRESS = (
    """
WITH t AS (SELECT * FROM """
    + _TOKENS
    + """),
wait AS (SELECT coalesce(c.ack_wait_ms, s.ack_wait_ms, 30000) / 1000.0 AS secs
           FROM {consumers} c JOIN {streams} s ON s.name = c.stream_name
          WHERE c.stream_name = %(stream)s AND c.name = %(consumer)s),
done AS (
    UPDATE {deliveries} d
       SET lease_until = now() + make_interval(secs => (SELECT secs FROM wait)::float8)
      FROM t
     WHERE d.stream_name = %(stream)s AND d.consumer_name = %(consumer)s AND d.state = 'pending'
       AND d.event_id = t.id AND (t.gen IS NULL OR d.delivery_count = t.gen)
    RETURNING d.event_id)
SELECT count(*) FROM done
"""
)

CONSUMER_EXISTS = "SELECT 1 FROM {consumers} WHERE stream_name = %(stream)s AND name = %(consumer)s"

PENDING = """
SELECT (SELECT count(*) FROM {events} e
         WHERE e.stream_name = c.stream_name AND e.id > greatest(c.position, c.dispatched)
           AND (%(regex)s = '' OR e.subject ~ %(regex)s)),
       (SELECT count(*) FROM {deliveries} d
         WHERE d.stream_name = c.stream_name AND d.consumer_name = c.name
           AND d.state = 'pending' AND d.event_id > c.position
           AND (d.delivery_count < c.max_deliver OR d.lease_until > now())),
       coalesce(c.filter_subject, '')
  FROM {consumers} c WHERE c.stream_name = %(stream)s AND c.name = %(consumer)s
"""

# ---- dead letters: rows of the dead-letter stream, read without a consumer ----

# %(hs)s / %(hc)s name the headers carrying the source stream and consumer.
DEAD_LETTERS = """
SELECT id, subject, headers, payload FROM {events}
 WHERE stream_name = %(dlq)s
   AND (%(stream)s = '' OR headers->>%(hs)s = %(stream)s)
   AND (%(consumer)s = '' OR headers->>%(hc)s = %(consumer)s)
 ORDER BY id LIMIT %(limit)s
"""

REMOVE_DEAD_LETTER = "DELETE FROM {events} WHERE stream_name = %(dlq)s AND id = %(id)s"

# ---- retention (run by one process at a time) ----

LIMITED_STREAMS = """
SELECT name, max_age_seconds, max_msgs, max_bytes, retention, duplicate_window_ms
  FROM {streams}
"""

PURGE_AGE = """
DELETE FROM {events} WHERE stream_name = %(stream)s
   AND ts < now() - make_interval(secs => %(max_age)s::float8)
"""

PURGE_COUNT = """
DELETE FROM {events} WHERE stream_name = %(stream)s AND id <= (
    SELECT id FROM {events} WHERE stream_name = %(stream)s
     ORDER BY id DESC OFFSET %(keep)s LIMIT 1)
"""

PURGE_BYTES = """
DELETE FROM {events} WHERE id IN (
    SELECT id FROM (
        SELECT id, sum(octet_length(payload) + octet_length(subject))
                   OVER (ORDER BY id DESC) AS running
          FROM {events} WHERE stream_name = %(stream)s) sized
     WHERE running > %(max_bytes)s)
"""

# Interest and work-queue streams: drop what every consumer has settled.
PURGE_SETTLED = """
DELETE FROM {events} WHERE stream_name = %(stream)s AND id <= (
    SELECT min(position) FROM {consumers} WHERE stream_name = %(stream)s)
"""

# Leases whose event is gone (purged here, deleted by a work-queue ack for another
# consumer, or by hand): without them the ack floor can move past those ids.
PURGE_ORPHAN_LEASES = """
DELETE FROM {deliveries} d WHERE d.stream_name = %(stream)s
   AND NOT EXISTS (SELECT 1 FROM {events} e WHERE e.id = d.event_id)
"""

PURGE_MSG_IDS = """
DELETE FROM {msg_ids} WHERE stream_name = %(stream)s
   AND seen_at < now() - make_interval(secs => %(window)s::float8)
"""


class Queries:
    """The statements above, bound to one schema."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self._idents = {key: sql.Identifier(schema, table) for key, table in TABLES.items()}
        self._cache: dict[str, bytes] = {}

    def __call__(self, template: str) -> bytes:
        # Rendered to bytes once: psycopg would otherwise compose the identifiers on
        # every execute, and caches its parsing of a bytes query.
        found = self._cache.get(template)
        if found is None:
            found = sql.SQL(template).format(**self._idents).as_bytes(None)
            self._cache[template] = found
        return found
