"""Message header names with a meaning to the bus, the same on every provider.

They are JetStream's names, so a message published by a plain NATS client and
one published through this plugin look alike on the wire.
"""

from __future__ import annotations

MSG_ID_HEADER = "Nats-Msg-Id"  # dedup id: a second publish within duplicate_window is dropped
CORRELATION_HEADER = "Nats-Correlation-Id"
# pgchannel of the Go plugin surfaced the correlation id under this name.
LEGACY_CORRELATION_HEADER = "X-Correlation-Id"
