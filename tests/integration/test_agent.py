"""The agent against a real Mosquitto: same scores as offline, nothing lost, bad input parked."""

from __future__ import annotations

import json
import math
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.replay import messages_from_file
from tests.conftest import load_stack_module
from tests.integration.harness import (
    BUNDLES,
    DEV_KEY,
    Collector,
    agent_config,
    private_mosquitto,
    publish_all,
    scrape,
    start_agent,
    wait_for,
)

pytestmark = pytest.mark.broker

SAMPLE = Path(__file__).resolve().parents[2] / "models" / "samples" / "payments-holdout.csv"


def raw_items(prefix: str, path: Path, stream: str, devices: int = 4, limit: int | None = None):
    messages = messages_from_file(path, devices=devices)[:limit]
    return [(f"{prefix}/{m.device}/raw/{stream}", m.payload) for m in messages], messages


def offline_scores(bundle: Path, data: Path, devices: int) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "score", str(bundle), str(data),
         "--trusted-keys", str(DEV_KEY), "--devices", str(devices)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return {d["event_id"]: d["score"] for d in lines}


def test_mqtt_scores_equal_offline_scores(tmp_path: Path, mqtt_port: int, mqtt_prefix: str) -> None:
    items, messages = raw_items(mqtt_prefix, SAMPLE, "payments", devices=4)
    expected = offline_scores(BUNDLES / "payments-fraud.ewb", SAMPLE, devices=4)
    assert len(expected) == len(messages)
    with Collector(mqtt_port, [f"{mqtt_prefix}/#"]) as collector:
        agent = start_agent(agent_config(tmp_path, mqtt_port, mqtt_prefix), tmp_path / "a.log",
                            collector, mqtt_prefix)  # fmt: skip
        try:
            publish_all(mqtt_port, items)
            wait_for(lambda: collector.count("scored") >= len(items), 60, "all scored events")
        finally:
            agent.stop()
        scored = {d["event_id"]: d["score"] for d in collector.documents("scored")}
        alerts = collector.documents("alerts")
    assert scored.keys() == expected.keys()
    for event_id, score in expected.items():
        assert scored[event_id] == pytest.approx(score, abs=1e-6), event_id
    assert {a["event_id"] for a in alerts} == {
        d["event_id"] for d in collector.documents("scored") if d["anomaly"]
    }


def test_windowed_sensor_scores_equal_offline(
    tmp_path: Path, mqtt_port: int, mqtt_prefix: str, datasets: Path
) -> None:
    data = datasets / "skab" / "valve1" / "1.csv"
    items, _ = raw_items(mqtt_prefix, data, "sensors", devices=1)
    expected = offline_scores(BUNDLES / "sensors-skab.ewb", data, devices=1)
    streams = f'[streams.sensors]\nbundle = "{BUNDLES / "sensors-skab.ewb"}"\n'
    with Collector(mqtt_port, [f"{mqtt_prefix}/#"]) as collector:
        config = agent_config(tmp_path, mqtt_port, mqtt_prefix, streams=streams)
        agent = start_agent(config, tmp_path / "a.log", collector, mqtt_prefix)
        try:
            publish_all(mqtt_port, items)
            wait_for(lambda: collector.count("scored") >= len(items), 60, "all scored events")
        finally:
            agent.stop()
        scored = {d["event_id"]: d["score"] for d in collector.documents("scored")}
    assert scored.keys() == expected.keys()
    assert all(scored[k] == pytest.approx(v, abs=1e-6) for k, v in expected.items())


def _stream_in_background(port: int, items: list, rate: float) -> threading.Thread:
    thread = threading.Thread(target=publish_all, args=(port, items, rate), daemon=True)
    thread.start()
    return thread


def test_kill_9_mid_stream_loses_nothing(tmp_path: Path, mqtt_port: int, mqtt_prefix: str) -> None:
    base, _ = raw_items(mqtt_prefix, SAMPLE, "payments", devices=8)
    # Several passes over the sample, each event with its own id.
    items = []
    for n in range(4):
        for topic, payload in base:
            document = json.loads(payload)
            document["event_id"] = f"{document['event_id']}-pass{n}"
            items.append((topic, json.dumps(document).encode()))
    config = agent_config(tmp_path, mqtt_port, mqtt_prefix)
    with Collector(mqtt_port, [f"{mqtt_prefix}/#"]) as collector:
        agent = start_agent(config, tmp_path / "a1.log", collector, mqtt_prefix)
        sender = _stream_in_background(mqtt_port, items, rate=2000)
        wait_for(lambda: collector.count("scored") > 600, 30, "scoring to be under way")
        agent.kill()
        killed_at = collector.count("scored")
        time.sleep(0.5)
        agent = start_agent(config, tmp_path / "a2.log", collector, mqtt_prefix)
        try:
            sender.join(60)
            expected = {json.loads(p)["event_id"] for _, p in items}
            wait_for(lambda: expected <= {d["event_id"] for d in collector.documents("scored")},
                     60, "every event to be scored")  # fmt: skip
        finally:
            agent.stop()
        scored_ids = [d["event_id"] for d in collector.documents("scored")]
    assert killed_at < len(items), "the kill came after everything was scored"
    assert set(scored_ids) == expected
    duplicates = len(scored_ids) - len(set(scored_ids))
    print(f"killed after {killed_at} scored; {duplicates} duplicates after restart")


def bad_inputs() -> list[tuple[bytes, str]]:
    valid = {f"V{k}": 0.1 for k in range(1, 29)} | {"Amount": 3.0}
    rng = random.Random(5)
    return [
        (bytes(rng.getrandbits(8) for _ in range(64)), "invalid_json"),
        (b"[1, 2]", "not_an_object"),
        (json.dumps(valid | {"V2": "abc"}).encode(), "wrong_type"),
        (json.dumps(valid | {"V2": math.nan}).encode(), "non_finite"),
        (json.dumps(valid | {"Amount": -math.inf}).encode(), "non_finite"),
        (json.dumps({"V1": 1.0}).encode(), "missing_field"),
        (b'{"blob": "' + b"x" * 1_000_000 + b'"}', "payload_too_large"),
        (b'{"a":' * 5000 + b"1" + b"}" * 5000, "too_deeply_nested"),
    ]


def test_bad_input_goes_to_dead_letter_and_valid_keeps_flowing(
    tmp_path: Path, mqtt_port: int, mqtt_prefix: str
) -> None:
    good, _ = raw_items(mqtt_prefix, SAMPLE, "payments", devices=2, limit=400)
    cases = bad_inputs()
    topic = f"{mqtt_prefix}/dev-bad/raw/payments"
    items: list[tuple[str, bytes]] = []
    expected_reasons: list[str] = []
    for i, (topic_good, payload) in enumerate(good):
        items.append((topic_good, payload))
        if i % 10 == 0:
            bad, reason = cases[(i // 10) % len(cases)]
            items.append((topic, bad))
            expected_reasons.append(reason)
    with Collector(mqtt_port, [f"{mqtt_prefix}/#"]) as collector:
        agent = start_agent(agent_config(tmp_path, mqtt_port, mqtt_prefix), tmp_path / "a.log",
                            collector, mqtt_prefix)  # fmt: skip
        try:
            publish_all(mqtt_port, items)
            wait_for(lambda: collector.count("scored") >= len(good)
                     and collector.count("deadletter") >= len(expected_reasons),
                     60, "scored and dead-lettered events")  # fmt: skip
            rss_after_first = agent.rss_mb()
            publish_all(mqtt_port, items)  # the same again: memory must not keep growing
            wait_for(lambda: collector.count("deadletter") >= 2 * len(expected_reasons), 60,
                     "second round of dead letters")  # fmt: skip
            rss_after_second = agent.rss_mb()
            assert agent.alive()
        finally:
            agent.stop()
        reasons = sorted(d["reason"] for d in collector.documents("deadletter"))
    assert reasons == sorted(expected_reasons * 2)
    assert rss_after_second - rss_after_first < 20, (rss_after_first, rss_after_second)


def test_sigterm_drains_and_restart_loses_nothing(
    tmp_path: Path, mqtt_port: int, mqtt_prefix: str
) -> None:
    items, messages = raw_items(mqtt_prefix, SAMPLE, "payments", devices=4)
    config = agent_config(tmp_path, mqtt_port, mqtt_prefix)
    with Collector(mqtt_port, [f"{mqtt_prefix}/#"]) as collector:
        agent = start_agent(config, tmp_path / "a1.log", collector, mqtt_prefix)
        sender = _stream_in_background(mqtt_port, items, rate=1500)
        wait_for(lambda: collector.count("scored") > 200, 30, "scoring to be under way")
        started = time.monotonic()
        assert agent.terminate(30) == 0
        stop_seconds = time.monotonic() - started
        statuses = collector.documents("status")
        assert statuses[-1]["state"] == "offline"
        agent = start_agent(config, tmp_path / "a2.log", collector, mqtt_prefix)
        try:
            sender.join(60)
            expected = {m.event_id for m in messages}
            wait_for(lambda: expected <= {d["event_id"] for d in collector.documents("scored")},
                     60, "every event to be scored")  # fmt: skip
        finally:
            agent.stop()
    assert stop_seconds < 15


def _acl_broker(directory: Path, acl: str) -> tuple[int, subprocess.Popen[bytes]]:
    """A Mosquitto of this test's own whose ACL file can be rewritten and reloaded (SIGHUP)."""
    (directory / "acl").write_text(acl)
    return private_mosquitto(directory, f"acl_file {directory / 'acl'}\n")


def test_refused_publishes_are_retried_and_nothing_is_lost(
    tmp_path: Path, mqtt_prefix: str
) -> None:
    # Scored and alert topics are read-only at first: the broker answers the agent's
    # publishes with PUBACK "Not authorized". The raw messages must stay unacked and be
    # scored once the ACL allows it, not acked as if their outputs had been delivered.
    readable = f"topic read {mqtt_prefix}/+/scored/#\ntopic read {mqtt_prefix}/+/alerts/#\n"
    open_topics = "".join(
        f"topic readwrite {mqtt_prefix}/+/{kind}/#\n" for kind in ("raw", "status", "deadletter")
    )
    port, broker = _acl_broker(tmp_path, open_topics + readable)
    items, messages = raw_items(mqtt_prefix, SAMPLE, "payments", devices=2, limit=50)
    metrics_port = load_stack_module().free_port()
    config = agent_config(tmp_path, port, mqtt_prefix, extra=f"metrics_port = {metrics_port}")
    try:
        with Collector(port, [f"{mqtt_prefix}/#"]) as collector:
            agent = start_agent(config, tmp_path / "a.log", collector, mqtt_prefix)
            try:
                publish_all(port, items)
                refused = 'edgewatch_agent_publish_refused_total{reason="Not authorized"}'
                wait_for(lambda: scrape(metrics_port).get(refused, 0) >= len(items), 30,
                         "the broker to refuse the scored events")  # fmt: skip
                assert collector.count("scored") == 0
                (tmp_path / "acl").write_text(f"topic readwrite {mqtt_prefix}/#\n")
                broker.send_signal(signal.SIGHUP)  # Mosquitto reloads its ACL file
                expected = {m.event_id for m in messages}
                wait_for(lambda: expected <= {d["event_id"] for d in collector.documents("scored")},
                         60, "every event scored after the ACL allowed it")  # fmt: skip
            finally:
                agent.stop()
    finally:
        broker.terminate()
        broker.wait(10)
