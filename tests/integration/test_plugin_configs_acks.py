"""Configs as the engine sends them (Struct, every documented form) and the ack step's
action and delay, through a real plugin process on a real nats-server."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import nats
import pytest
from nats.js.api import AckPolicy, DeliverPolicy
from plugin_process_helpers import bus, consumer_info, host, recorder, struct

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.devservers.host import PluginError, PluginHost

pytestmark = pytest.mark.asyncio(loop_scope="session")
__all__ = ["bus", "host", "recorder"]  # fixtures, used by name


# --- configs as Struct (what the engine sends for these contracts) ------------------


async def test_struct_typed_configs_take_every_documented_form(
    host: PluginHost, bus: dict[str, str], nats_url: str
) -> None:
    config = {
        "name": "forms-c",
        "stream_name": "PLUGIN_IT",
        "filter_subject": "it.forms",
        "ack_policy": "explicit",
        "deliverPolicy": "DELIVER_POLICY_ALL",  # camelCase key, full enum name
        "ack_wait": "1m30s",
        "max_deliver": 5.0,  # Struct numbers are doubles
        "_config_dir": "/ignored",
    }
    handle = await host.create_module("eventbus.consumer", "forms-c", typed=struct(config))
    await host.init_module(handle)
    await host.start_module(handle)
    info = (await consumer_info(nats_url, "forms-c")).config
    assert (info.ack_policy, info.deliver_policy) == (AckPolicy.EXPLICIT, DeliverPolicy.ALL)
    assert (info.ack_wait, info.max_deliver) == (90, 5)

    with pytest.raises(PluginError, match=r"ack_polcy: unknown key for ConsumerConfig.*ack_policy"):
        await host.create_module(
            "eventbus.consumer", "typo-c", typed=struct({"name": "t", "ack_polcy": "explicit"})
        )
    with pytest.raises(PluginError, match=r"ack_wait.*not a duration.*1m30"):
        await host.create_module(
            "eventbus.consumer", "bad-c", typed=struct({"name": "t", "ack_wait": "1m30"})
        )


# --- the ack step's action and delay ----------------------------------------------

# Each case runs twice: the settings written in the step config (what the engine
# sends as typed_config: the resolved YAML, here in its short forms) and carried by
# the typed input (the pipeline's data; typed fields).
ACK_FORMS = ["step-config", "typed-input"]


async def settle_with_ack_step(
    host: PluginHost, token: str, form: str, action: str, delay: float = 0.0
) -> None:
    settings: dict[str, Any] = {"action": action}
    if delay:
        settings["delay"] = f"{round(delay * 1000)}ms"
    if form == "step-config":
        step = await host.create_step("step.eventbus.ack", f"ack-{action}", typed=struct(settings))
        answer = await host.execute_step(
            step, pb.AckRequest(), typed_config=struct({"ack_token": token, **settings})
        )
    else:
        step = await host.create_step("step.eventbus.ack", f"ack-{action}")
        request = pb.AckRequest(
            ack_token=token, action=pb.AckAction.Value(f"ACK_ACTION_{action.upper()}")
        )
        request.delay.FromMilliseconds(round(delay * 1000))
        answer = await host.execute_step(step, request, typed_config=struct({}))
    assert answer.error == ""
    result = pb.AckResponse()
    answer.typed_output.Unpack(result)
    assert result.count == 1


async def one_delivery(
    host: PluginHost, durable: str, subject: str, ack_wait: float
) -> tuple[str, str]:
    """A consumer with ``ack_wait``, one message published and consumed: (step, token)."""
    handle = await host.create_module(
        "eventbus.consumer",
        durable,
        typed=struct(
            {
                "name": durable,
                "stream_name": "PLUGIN_IT",
                "filter_subject": subject,
                "ack_wait": f"{ack_wait}s",
            }
        ),
    )
    await host.init_module(handle)
    await host.start_module(handle)
    publish = await host.create_step(
        "step.eventbus.publish", f"pub-{durable}", {"subject": subject}
    )
    await host.run_step(publish, pb.PublishRequest(payload=b"job"), pb.PublishResponse)
    take = await host.create_step("step.eventbus.consume", f"take-{durable}", {"consumer": durable})
    (first,) = (await take_messages(host, take, 5.0)).messages
    assert first.delivery_count == 1
    return take, first.ack_token


async def take_messages(host: PluginHost, take: str, wait: float) -> pb.ConsumeResponse:
    request = pb.ConsumeRequest(batch_size=1)
    request.max_wait.FromMilliseconds(round(wait * 1000))
    result: pb.ConsumeResponse = await host.run_step(take, request, pb.ConsumeResponse)
    return result


@pytest.mark.parametrize("form", ACK_FORMS)
async def test_ack_step_nak_with_delay_redelivers_after_the_delay(
    host: PluginHost, bus: dict[str, str], form: str
) -> None:
    durable = f"nak-delay-{form}"
    take, token = await one_delivery(host, durable, f"it.nakdelay.{form}", ack_wait=30)
    delay = 1.5
    began = time.monotonic()
    await settle_with_ack_step(host, token, form, "nak", delay)
    # Not before the delay (a bare nak comes back at once) ...
    assert (await take_messages(host, take, delay / 2)).messages == []
    # ... and soon after it (not at the 30 s ack wait).
    (again,) = (await take_messages(host, take, 10.0)).messages
    waited = time.monotonic() - began
    assert again.delivery_count == 2
    assert delay <= waited < delay + 5, waited


@pytest.mark.parametrize("form", ACK_FORMS)
async def test_ack_step_term_stops_redelivery(
    host: PluginHost, bus: dict[str, str], nats_url: str, form: str
) -> None:
    durable = f"term-{form}"
    ack_wait = 1.0
    nc = await nats.connect(nats_url)
    try:
        terminated = await nc.subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.PLUGIN_IT.{durable}"
        )
        await nc.flush()
        take, token = await one_delivery(host, durable, f"it.term.{form}", ack_wait)
        await settle_with_ack_step(host, token, form, "term")
        advisory = json.loads((await terminated.next_msg(timeout=5)).data)
        assert advisory["consumer"] == durable
    finally:
        await nc.close()
    # Unsettled, the message would be back after its 1 s ack wait: past twice that,
    # nothing came.
    assert (await take_messages(host, take, 2.5 * ack_wait)).messages == []
    info = await consumer_info(nats_url, durable)
    assert (info.num_ack_pending, info.num_pending, info.num_redelivered) == (0, 0, 0)


@pytest.mark.parametrize("form", ACK_FORMS)
async def test_ack_step_in_progress_extends_the_lease(
    host: PluginHost, bus: dict[str, str], form: str
) -> None:
    durable = f"wip-{form}"
    ack_wait = 2.0
    take, token = await one_delivery(host, durable, f"it.wip.{form}", ack_wait)
    leased = time.monotonic()
    # The scenario itself, not a readiness wait: let most of the lease pass.
    await asyncio.sleep(ack_wait * 0.6)
    signalled = time.monotonic()
    await settle_with_ack_step(host, token, form, "in_progress")
    # The original lease ends at leased + ack_wait; the signal renewed it from
    # `signalled`, so nothing comes back before signalled + ack_wait ...
    assert (await take_messages(host, take, ack_wait * 0.8)).messages == []
    assert time.monotonic() > leased + ack_wait
    # ... and then the broker redelivers it (the signal is not an ack).
    (again,) = (await take_messages(host, take, 10.0)).messages
    waited = time.monotonic() - signalled
    assert again.delivery_count == 2
    assert ack_wait <= waited < ack_wait + 5, waited
