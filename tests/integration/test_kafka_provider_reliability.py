"""The subscriber reliability suite (test_reliability_subscriber.py) on Kafka.

The same tests, collected here with a ``target`` of provider kafka: backoff by
delivery count, dead letters holding exactly the exhausted messages (and the
``dlq`` CLI over them), in-progress signals under long handlers, graceful stop,
msg_id dedup.
"""

from __future__ import annotations

from typing import Any

import pytest
import test_reliability_subscriber as suite

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
def target(kafka_url: str) -> dict[str, Any]:
    return {"provider": "kafka", "url": kafka_url, "broker": {"deploy_target": "self_hosted"}}


test_backoff_schedule_and_dead_letters_hold_exactly_the_exhausted = (
    suite.test_backoff_schedule_and_dead_letters_hold_exactly_the_exhausted
)
test_long_handler_is_not_redelivered_under_it = suite.test_long_handler_is_not_redelivered_under_it
test_stop_finishes_in_flight_naks_the_rest_and_acks_only_successes = (
    suite.test_stop_finishes_in_flight_naks_the_rest_and_acks_only_successes
)
test_stop_naks_fetched_but_unstarted_messages = suite.test_stop_naks_fetched_but_unstarted_messages
test_msg_id_is_deduplicated_within_the_window = suite.test_msg_id_is_deduplicated_within_the_window
