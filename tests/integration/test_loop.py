"""The closed loop (deploy/dev/loop.py) on the real stack: a run publishes a new version and the
agent serves it, as its retained status and its scored events in Kafka say."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from models.bundle import load_trusted_keys, verify_bundle
from models.kafka_read import read_to_end
from plumbing.settings import KafkaSettings
from tests.conftest import load_script
from tests.integration.harness import BUNDLES, Collector, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.central, pytest.mark.slow]


def new_loop(work: Path, stack: object, prefix: str, datasets: Path) -> tuple[Any, list[str]]:
    """A loop on the run's stack with topics of its own, and the lines it prints."""
    module = load_script("deploy/dev/loop.py", "edgewatch_loop")
    lines: list[str] = []
    loop = module.Loop(work=work, prefix=prefix, stack=stack,
                       source=datasets / "creditcard" / "creditcard_head.csv",
                       echo=lines.append)  # fmt: skip
    return loop, lines


def test_a_loop_run_publishes_a_new_version_and_the_agent_serves_it(
    tmp_path: Path, central_stack: object, mqtt_prefix: str, datasets: Path
) -> None:
    loop, lines = new_loop(tmp_path / "loop", central_stack, mqtt_prefix, datasets)
    try:
        status = loop.run()
        assert status == 0, "\n".join(lines[-40:])
        version = loop.result.version
        assert version > 1  # above the shipped bundle's version
        assert lines[-1] == f"agent serving payments-fraud version {version}"
        # Every stage is on the scoreboard with its time.
        assert len(loop.stages) == 10
        assert all(stage.seconds > 0 for stage in loop.stages)

        # From the outside: the agent's retained status names the new version ...
        with Collector(central_stack.state.mqtt_port, [f"{mqtt_prefix}/+/status/agent"]) as seen:  # type: ignore[attr-defined]
            wait_for(lambda: bool(seen.documents("status")), 10, "the retained agent status")
            agent_status = seen.documents("status")[-1]
        assert agent_status["state"] == "online"
        assert agent_status["models"]["payments"]["version"] == version

        # ... the scored events in Kafka carry it (the 200 sent after the promotion all do) ...
        kafka = KafkaSettings(bootstrap_servers=central_stack.state.kafka_bootstrap)  # type: ignore[attr-defined]
        scored = [json.loads(r.value or b"{}") for r in read_to_end(kafka, loop.topics["scored"])]
        after = [s for s in scored if s["event_id"].startswith("after-terminal")]
        assert len(after) >= 200
        assert {s["model"]["version"] for s in after} == {version}
        assert any(s["model"]["version"] == 1 for s in scored)  # the shipped one served first

        # ... and edge.models holds exactly that one bundle, validly signed.
        (record,) = read_to_end(kafka, loop.topics["models"])
        bundle = verify_bundle(record.value or b"", load_trusted_keys(BUNDLES))
        assert bundle.manifest.version == version
        assert bundle.manifest.features.names == [f"V{i}" for i in range(1, 29)] + ["Amount"]
    finally:
        loop.close()
