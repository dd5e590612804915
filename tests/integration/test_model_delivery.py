"""A model published on Kafka reaches the agent through the bridge, verified on arrival."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.bundle import load_private_key, read_unverified, sign_bundle
from tests.helpers import make_keys
from tests.integration.harness import (
    BUNDLES,
    DEV_KEY,
    Collector,
    agent_config,
    bridge_config,
    publish_all,
    start_agent,
    start_bridge,
    wait_for,
)

pytestmark = pytest.mark.broker


def publish(bundle: Path, bootstrap: str, topic: str, trusted: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "models.cli", "publish", str(bundle), "--bootstrap", bootstrap,
         "--topic", topic, "--trusted-keys", str(trusted)],
        check=True, capture_output=True,
    )  # fmt: skip


def test_bundle_from_kafka_is_served_by_the_agent_and_forgeries_are_not(
    tmp_path: Path, mqtt_port: int, kafka_bootstrap: str, mqtt_prefix: str
) -> None:
    streams = '[streams.payments]\nmodel = "payments-fraud"\n'
    agent_toml = agent_config(tmp_path, mqtt_port, mqtt_prefix, streams=streams)
    bridge_toml = bridge_config(tmp_path, mqtt_port, kafka_bootstrap, mqtt_prefix)
    models_topic = f"t.{mqtt_prefix}.models"
    # Version 2 of the shipped bundle, signed by an untrusted key: must be refused.
    manifest, model, _ = read_unverified((BUNDLES / "payments-fraud.ewb").read_bytes())
    private, public = make_keys(tmp_path / "rogue")
    forged = tmp_path / "forged.ewb"
    forged.write_bytes(
        sign_bundle(manifest.model_copy(update={"version": 2}), model, load_private_key(private))
    )
    raw = f"{mqtt_prefix}/term-9/raw/payments"
    payload = {f"V{k}": 0.0 for k in range(1, 29)} | {"Amount": 1.0}
    with Collector(mqtt_port, [f"{mqtt_prefix}/#"]) as collector:
        agent = start_agent(agent_toml, tmp_path / "agent.log", collector, mqtt_prefix)
        bridge = start_bridge(bridge_toml, tmp_path / "bridge.log", collector)
        try:
            # Before any model: dead-lettered as no_model, never dropped.
            publish_all(mqtt_port, [(raw, json.dumps(payload | {"event_id": "before"}).encode())])
            wait_for(lambda: collector.count("deadletter") >= 1, 30, "a no_model dead letter")
            assert collector.documents("deadletter")[0]["reason"] == "no_model"

            publish(BUNDLES / "payments-fraud.ewb", kafka_bootstrap, models_topic, DEV_KEY)

            def serving(version: int) -> bool:
                states = [d for d in collector.documents("status") if d.get("service") == "agent"]
                model = states[-1].get("models", {}).get("payments") if states else None
                return model is not None and model["version"] == version

            wait_for(lambda: serving(1), 60, "the agent to serve the delivered bundle")
            publish(forged, kafka_bootstrap, models_topic, public)
            publish_all(mqtt_port, [(raw, json.dumps(payload | {"event_id": "after"}).encode())])
            wait_for(lambda: collector.count("scored") >= 1, 30, "a scored event")
            wait_for(lambda: "refused model bundle" in agent.log_text(), 30, "the refusal")
            assert serving(1)
        finally:
            bridge.stop()
            agent.stop()
    (scored,) = collector.documents("scored")
    assert scored["event_id"] == "after"
    assert scored["model"]["version"] == 1
