"""Capability names: what the engine sees. Identical to the Go plugin."""

from __future__ import annotations

PLUGIN_NAME = "workflow-plugin-eventbus"

BROKER = "eventbus.broker"
STREAM = "eventbus.stream"
CONSUMER = "eventbus.consumer"
SUBSCRIBE = "trigger.eventbus.subscribe"

PUBLISH_STEP = "step.eventbus.publish"
CONSUME_STEP = "step.eventbus.consume"
ACK_STEP = "step.eventbus.ack"

MODULE_TYPES = (BROKER, STREAM, CONSUMER)
STEP_TYPES = (PUBLISH_STEP, CONSUME_STEP, ACK_STEP)
TRIGGER_TYPES = (SUBSCRIBE,)

# Names of the temporary consumers `tail` makes; refused as durable names (a later
# tail removes idle ones by this prefix).
EPHEMERAL_PREFIX = "eventbus_ephemeral_"

# The keys of the data map a trigger hands each pipeline run (DESIGN.md "Trigger data").
TRIGGER_DATA_KEYS = (
    "subject",
    "payload",
    "headers",
    "sequence",
    "published_at",
    "ack_token",
    "body",
    "delivery_count",
    "stream",
    "consumer",
)

# Module type names of the Go plugin before v0.2.0, still accepted.
MODULE_ALIASES = {
    "infra.eventbus": BROKER,
    "infra.eventbus.stream": STREAM,
    "infra.eventbus.consumer": CONSUMER,
}


def canonical_module_type(type_name: str) -> str:
    """Map an old ``infra.eventbus*`` name to today's; other names pass through."""
    return MODULE_ALIASES.get(type_name, type_name)


def env_key(name: str) -> str:
    """``bmw-eventbus`` -> ``BMW_EVENTBUS``: '-' to '_', then upper case (the part of
    ``EVENTBUS_<NAME>_URI`` that names a broker).

    Go's ``strings.ToUpper`` maps rune by rune and leaves characters without a
    one-rune upper case (such as 'ß') alone; so do we.
    """
    out = []
    for ch in name.replace("-", "_"):
        upper = ch.upper()
        out.append(upper if len(upper) == 1 else ch)
    return "".join(out)
