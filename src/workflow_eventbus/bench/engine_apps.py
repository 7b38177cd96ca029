"""The app configs of the engine bench: one job, each side's closest config.

The job: every event on ``orders.created`` (JetStream stream ``ORDERS``) yields one
derived event on ``orders.audited``. Ours is ``trigger.eventbus.subscribe`` ->
pipeline -> ``step.eventbus.publish`` on a durable pull consumer. The engine's
built-in equivalent (v0.85.4) is the ``messaging.nats`` module named ``broker``
(its pipeline trigger ``type: event`` with ``topic:`` finds it by that name), a
core NATS subscription, and ``step.publish`` with ``topic`` and ``broker`` (a core
NATS publish of the pipeline's data as JSON). ``messaging.nats`` ignores its
``url`` and always dials 127.0.0.1:4222. The ingest rows put an HTTP route in
front of either publish step.
"""

from __future__ import annotations

STREAM = "ORDERS"
SUBJECTS = "orders.>"
IN_SUBJECT = "orders.created"
OUT_SUBJECT = "orders.audited"
ROUTE = "/orders"

_BUS = """\
  - name: bus
    type: eventbus.broker
    config:
      provider: nats
      deploy_target: self_hosted
      dsn: "${EVENTBUS_NATS_URL}"
  - name: orders-stream
    type: eventbus.stream
    dependsOn: [bus]
    config:
      name: ORDERS
      broker_ref: bus
      subjects: ["orders.>"]
"""

_BUILTIN_BROKER = """\
  - name: broker
    type: messaging.nats
    config:
      url: "nats://127.0.0.1:4222"   # ignored by v0.85.4: it always dials this address
"""

_HTTP = """\
  - name: web
    type: http.server
    config:
      address: "${EVENTBUS_HTTP_ADDR}"
  - name: router
    type: http.router
    dependsOn: [web]
"""


def ours_trigger(durable: str, max_in_flight: int, data: tuple[str, ...] = ()) -> str:
    """Our trigger -> publish pipeline; ``data``: the consumer's ``trigger_data`` keys
    (empty: every key)."""
    keys = f"      trigger_data: [{', '.join(data)}]\n" if data else ""
    return f"""\
name: bench-ours-trigger
modules:
{_BUS}  - name: auditor
    type: eventbus.consumer
    dependsOn: [orders-stream]
    config:
      name: {durable}
      stream_name: ORDERS
      broker_ref: bus
      filter_subject: {IN_SUBJECT}
      max_in_flight: {max_in_flight}
{keys}pipelines:
  audit:
    trigger:
      type: trigger.eventbus.subscribe
      config:
        name: {durable}
        broker_ref: bus
    steps:
      - name: publish-audited
        type: step.eventbus.publish
        config:
          subject: {OUT_SUBJECT}
"""


def builtin_trigger() -> str:
    return f"""\
name: bench-builtin-trigger
modules:
{_BUILTIN_BROKER}pipelines:
  audit:
    trigger:
      type: event
      config:
        topic: {IN_SUBJECT}
    steps:
      - name: publish-audited
        type: step.publish
        config:
          topic: {OUT_SUBJECT}
          broker: broker
"""


def _ingest(name: str, broker: str, raw_body: bool, publish: str, answer: str) -> str:
    """An HTTP route -> a publish step -> a 202 answer; the rows differ in the step."""
    raw = "\n        include_raw_body: true" if raw_body else ""
    return f"""\
name: {name}
modules:
{_HTTP}{broker}workflows:
  http:
    server: web
    router: router
pipelines:
  ingest:
    trigger:
      type: http
      config:
        path: {ROUTE}
        method: POST{raw}
    steps:
      - name: publish
{publish}      - name: respond
        type: step.json_response
        config:
          status: 202
          body:
{answer}"""


def ours_ingest() -> str:
    return _ingest(
        "bench-ours-ingest",
        _BUS,
        True,
        f"""\
        type: step.eventbus.publish
        config:
          subject: {IN_SUBJECT}
          payload: "{{{{ .request_body }}}}"
""",
        '            sequence: "{{ .steps.publish.sequence }}"\n',
    )


def builtin_ingest() -> str:
    return _ingest(
        "bench-builtin-ingest",
        _BUILTIN_BROKER,
        False,
        f"""\
        type: step.publish
        config:
          topic: {IN_SUBJECT}
          broker: broker
""",
        "            published: true\n",
    )
