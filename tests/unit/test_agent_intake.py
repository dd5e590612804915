"""The agent's intake: PUBLISH packets decoded in bulk and paho's own messages take one path."""

from __future__ import annotations

from pathlib import Path

import paho.mqtt.client as paho

from agent.service import AgentService
from agent.settings import AgentSettings
from plumbing.paho_io import BufferedClient

REPO = Path(__file__).resolve().parents[2]
RAW = "edge/term-1/raw/payments"
MODEL = "edge/models/payments-fraud"


def service(tmp_path: Path) -> AgentService:
    """A service that is never started (no broker): only its intake is exercised."""
    config = tmp_path / "agent.toml"
    config.write_text(
        f'node_id = "box-x"\ntrusted_keys = "{REPO / "models/bundles"}"\n'
        f'[streams.payments]\nbundle = "{REPO / "models/bundles/payments-fraud.ewb"}"\n'
        'model = "payments-fraud"\n'
    )
    agent = AgentService(AgentSettings.load(config))
    agent._intake_open.set()  # as start() does
    return agent


def test_intake_decodes_publishes_in_bulk(tmp_path: Path) -> None:
    agent = service(tmp_path)
    assert isinstance(agent.intake.client, BufferedClient)
    assert agent.intake.client.on_publish_batch == agent._on_publish_batch


def test_bulk_and_paho_messages_are_queued_and_routed_alike(tmp_path: Path) -> None:
    agent = service(tmp_path)
    generation = agent.intake.generation
    agent._on_publish_batch([(RAW, b'{"a": 1}', 7, False), (MODEL, b"bundle", 8, True),
                             (RAW, b'{"a": 2}', 9, True)])  # fmt: skip
    message = paho.MQTTMessage(mid=10, topic=RAW.encode())
    message.payload = b'{"a": 3}'
    agent._on_message(message)
    queued = [agent.queue.get_nowait() for _ in range(agent.queue.qsize())]
    assert [(q.topic, q.payload, q.token) for q in queued] == [
        (RAW, b'{"a": 1}', (7, generation)),
        (RAW, b'{"a": 2}', (9, generation)),
        (RAW, b'{"a": 3}', (10, generation)),
    ]
    assert all(q.received > 0 for q in queued)
    # The bundle waits for the worker (acked once handled), latest wins.
    assert agent._pending_models == {("bundle", "payments"): (b"bundle", (8, generation))}
    assert agent.metrics.redelivered._value.get() == 1  # the raw one with the dup flag


def test_raw_messages_are_left_unacked_while_stopping(tmp_path: Path) -> None:
    agent = service(tmp_path)
    agent._intake_open.clear()
    agent._on_publish_batch([(RAW, b"{}", 7, False), (MODEL, b"bundle", 8, False)])
    assert agent.queue.qsize() == 0
    assert ("bundle", "payments") in agent._pending_models
