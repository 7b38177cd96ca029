"""A FastStream service doing the engine bench's job, run as its own process.

    python -m workflow_eventbus.bench.faststream_service --url nats://127.0.0.1:4222 \
        --durable fs-1 --workers 16 --ready-file /tmp/ready

It reads ``orders.created`` from the JetStream stream ``ORDERS`` through a durable
consumer (FastStream's default ack policy: acknowledged after the handler
returned, nak'd when it raised), and republishes each body unchanged to
``orders.audited`` through JetStream (awaiting the stream's ack), like the
``trigger.eventbus.subscribe`` -> ``step.eventbus.publish`` pipeline does.
``--workers 1`` is FastStream's default (one message at a time). The ready file is
written once the subscriber runs; SIGTERM stops the service gracefully.
FastStream comes with the ``dev`` extras (``pip install -e '.[dev]'``).
"""

# No ``from __future__ import annotations``: FastStream reads the handler's
# annotation (NatsMessage, imported when serving) at decoration time.

import argparse
import asyncio
from pathlib import Path

STREAM = "ORDERS"
IN_SUBJECT = "orders.created"
OUT_SUBJECT = "orders.audited"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="NATS server URL")
    parser.add_argument("--durable", required=True, help="durable consumer name")
    parser.add_argument("--workers", type=int, default=1, help="FastStream max_workers")
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    return parser.parse_args(argv)


async def serve(ns: argparse.Namespace) -> None:
    from faststream import FastStream
    from faststream.nats import JStream, NatsBroker
    from faststream.nats.annotations import NatsMessage

    broker = NatsBroker(ns.url)
    stream = JStream(STREAM, declare=False)
    workers: dict[str, int] = {} if ns.workers <= 1 else {"max_workers": ns.workers}

    @broker.subscriber(IN_SUBJECT, stream=stream, durable=ns.durable, **workers)  # type: ignore[call-overload,untyped-decorator]
    async def audit(message: NatsMessage) -> None:
        await broker.publish(message.body, OUT_SUBJECT, stream=STREAM)

    app = FastStream(broker)

    @app.after_startup
    async def ready() -> None:
        ns.ready_file.write_text("ready\n")

    await app.run()


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    if ns.loop == "uvloop":
        import uvloop

        uvloop.run(serve(ns))
    else:
        asyncio.run(serve(ns))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
