"""Safe model rollout across a simulated fleet: real Mosquittos, agents, bridges and Kafka.

Three boxes (each its own Mosquitto, agent and bridge) share one Kafka; every model release
goes through the models topic and each box's bridge, transitions come back through the
bridges to the rollouts topic, and the fleet view reads them there. Each test uses streams
and models of its own, so the boxes are started once for the module.

Releases are the shipped payments model re-signed with the development key under another
name and version; a bad one has its threshold lowered (no training needed).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen

import pytest

from agent.replay import messages_from_file
from models.bundle import (
    Cohort,
    RolloutRules,
    RolloutSpec,
    load_private_key,
    load_trusted_keys,
    read_unverified,
    sign_bundle,
)
from models.central.settings import CentralSettings
from models.fleet import BoxView, read_fleet
from models.instructions import instruction_key, new_instruction, sign_instruction
from models.publish import publish_bundle
from plumbing.settings import KafkaSettings
from tests.conftest import REPO, load_stack_module
from tests.integration.harness import (
    BUNDLES,
    DEV_KEY,
    Collector,
    ServiceProcess,
    agent_config,
    bridge_config,
    private_mosquitto,
    publish_all,
    publish_retained,
    scrape,
    start_agent,
    start_bridge,
    wait_for,
)

pytestmark = [pytest.mark.broker, pytest.mark.rollout]

DEV_PRIVATE = REPO / "deploy" / "dev" / "keys" / "dev-signing-key.DEVELOPMENT-ONLY.pem"
SHIPPED = BUNDLES / "payments-fraud.ewb"
SAMPLE = REPO / "models" / "samples" / "payments-holdout.csv"
NODES = ("box-a", "box-b", "box-c")
STREAMS = {"good": "ro-good", "bad": "ro-bad", "drift": "ro-drift", "instr": "ro-instr"}
# Small periods so that a test needs hundreds of events, not thousands.
RULES = (
    "[rollout.rules]\nshadow_events = 300\nshadow_s = 0\nprobation_events = 600\n"
    "probation_s = 0\ncheck_events = 200\nalert_rate_slack = 0.03\n"
    "batch_latency_budget_ms = 1000\n"  # a shared test machine is not what is judged here
)
# On the sample's first 300 rows v1 (threshold 4.62) alerts on 0.3 %, a threshold of 2.0 on
# 2.7 % (within the band: 2 x 0.3 % + 3 points) and 0.33 on about half. With the V fields
# doubled (drift), rows 300-500 make v1 alert on 6 % and 2.0 on 28 % (band: up to 15 %).
DRIFTING_THRESHOLD, BAD_THRESHOLD, DRIFT = 2.0, 0.33, 2.0


def release(
    directory: Path,
    model: str,
    version: int,
    *,
    stream: str = "payments",
    threshold: float | None = None,
    cohort: Cohort | None = None,
    rules: dict[str, float] | None = None,
) -> Path:
    """The shipped model as ``model`` v``version``, re-signed with the development key."""
    manifest, tflite, _ = read_unverified(SHIPPED.read_bytes())
    score = manifest.score
    if threshold is not None:
        score = score.model_copy(update={"threshold": threshold})
    rollout = None
    if cohort is not None or rules is not None:
        rollout = RolloutSpec(cohort=cohort, rules=RolloutRules(**(rules or {})))
    changed = manifest.model_copy(
        update={
            "name": model,
            "version": version,
            "stream": stream,
            "score": score,
            "rollout": rollout,
        }
    )
    path = directory / f"{model}-v{version}-{time.monotonic_ns()}.ewb"
    path.write_bytes(sign_bundle(changed, tflite, load_private_key(DEV_PRIVATE)))
    return path


@dataclass
class Box:
    node: str
    port: int
    broker: Popen[bytes]
    collector: Collector
    agent_toml: Path
    directory: Path
    metrics_port: int
    agent: ServiceProcess | None = None
    bridge: ServiceProcess | None = None
    sent: int = 0
    rows: list[dict] = field(default_factory=list)
    row_of: dict[str, int] = field(default_factory=dict)

    def feed(self, stream: str, count: int, *, drift: float = 1.0) -> list[str]:
        """Publish ``count`` payments on ``stream`` and wait until all are scored."""
        items, ids = [], []
        for _ in range(count):
            # Each stream walks the sample from its first row, whatever ran before.
            index = self.row_of.get(stream, 0)
            self.row_of[stream] = index + 1
            row = dict(self.rows[index % len(self.rows)])
            if drift != 1.0:
                row |= {f"V{k}": row[f"V{k}"] * drift for k in range(1, 29)}
            row["event_id"] = f"{stream}-{self.node}-{self.sent}"
            self.sent += 1
            ids.append(row["event_id"])
            items.append((f"edge/dev-{self.sent % 4}/raw/{stream}", json.dumps(row).encode()))
        before = self.collector.count("scored")
        publish_all(self.port, items)
        wait_for(
            lambda: self.collector.count("scored") >= before + count,
            60,
            f"{count} scored events on {self.node}",
        )
        return ids

    def transitions(self, stream: str, kind: str | None = None) -> list[dict]:
        return [
            d
            for d in self.collector.documents("rollout")
            if d["stream"] == stream and kind in (None, d["kind"])
        ]

    def wait_transition(
        self, stream: str, kind: str, version: int | None = None, timeout_s: float = 30
    ) -> dict:
        def found() -> list[dict]:
            return [
                d
                for d in self.transitions(stream, kind)
                if version is None or d["to_version"] == version
            ]

        wait_for(lambda: bool(found()), timeout_s, f"{kind} v{version} of {stream} on {self.node}")
        return found()[-1]

    def feed_until(
        self,
        stream: str,
        kind: str,
        version: int,
        *,
        chunk: int = 100,
        limit: int = 3000,
        drift: float = 1.0,
    ) -> dict:
        sent = 0
        while not [d for d in self.transitions(stream, kind) if d["to_version"] == version]:
            assert sent < limit, f"no {kind} v{version} on {self.node} after {sent} events"
            contrary = {"promoted": "rejected", "rejected": "promoted"}.get(
                kind, "probation_passed"
            )
            otherwise = [
                d
                for d in self.transitions(stream, contrary)
                if contrary == "probation_passed" or d["to_version"] == version
            ]
            assert not otherwise, f"{self.node}: {otherwise[-1]}"
            self.feed(stream, chunk, drift=drift)
            sent += chunk
        return self.wait_transition(stream, kind, version)

    def scored(self, stream: str) -> list[dict]:
        return [d for d in self.collector.documents("scored") if d["stream"] == stream]

    def serving(self, stream: str) -> int | None:
        statuses = [d for d in self.collector.documents("status") if d.get("service") == "agent"]
        model = statuses[-1]["models"].get(stream) if statuses else None
        return None if model is None else model["version"]


@dataclass
class Fleet:
    boxes: list[Box]
    bootstrap: str
    kafka_prefix: str
    directory: Path

    @property
    def models_topic(self) -> str:
        return f"{self.kafka_prefix}.models"

    def publish(self, path: Path) -> None:
        kafka = KafkaSettings(bootstrap_servers=self.bootstrap)
        publish_bundle(path, kafka, self.models_topic, load_trusted_keys(DEV_KEY))

    def publish_raw(self, key: str, value: bytes) -> None:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": self.bootstrap, "acks": "all"})
        producer.produce(self.models_topic, key=key.encode(), value=value)
        assert producer.flush(30) == 0

    @property
    def central(self) -> Path:
        """A central.toml naming this fleet's Kafka and topics."""
        path = self.directory / "central.toml"
        path.write_text(
            f'[kafka]\nbootstrap_servers = "{self.bootstrap}"\n'
            f'[central]\ntopic_prefix = "{self.kafka_prefix}"\n'
        )
        return path

    def settled(self, stream: str, kind: str) -> dict[str, BoxView]:
        """The fleet view once every box's last transition of ``stream`` is ``kind``."""

        def done(view: dict[str, BoxView]) -> bool:
            lasts = [
                view[n].streams[stream].last if n in view and stream in view[n].streams else None
                for n in NODES
            ]
            return all(last is not None and last["kind"] == kind for last in lasts)

        return self.view(done, f"{kind} of {stream} on every box in the fleet view")

    def view(self, until: Callable[[dict[str, BoxView]], bool], what: str) -> dict[str, BoxView]:
        """The fleet view from Kafka, read again until ``until`` holds."""
        config = CentralSettings.load(self.central)
        boxes: dict[str, BoxView] = {}

        def ready() -> bool:
            nonlocal boxes
            boxes = {b.node: b for b in read_fleet(config, timeout_s=20)}
            return until(boxes)

        wait_for(ready, 60, what)
        return boxes


def start_box(directory: Path, node: str, bootstrap: str, kafka_prefix: str) -> Box:
    directory.mkdir()
    port, broker = private_mosquitto(directory, "")
    collector = Collector(port, ["edge/#"]).__enter__()
    v1 = {stream: release(directory, model, 1) for stream, model in STREAMS.items()}
    streams = "".join(
        f'[streams.{s}]\nbundle = "{v1[s]}"\nmodel = "{m}"\n' for s, m in STREAMS.items()
    )
    metrics_port = load_stack_module().free_port()
    extra = (
        f'metrics_port = {metrics_port}\n[rollout]\nstate_dir = "{directory / "state"}"\n{RULES}'
    )
    toml = agent_config(directory, port, "edge", streams=streams, extra=extra, node=node)
    box = Box(node, port, broker, collector, toml, directory, metrics_port)
    box.rows = [json.loads(m.payload) for m in messages_from_file(SAMPLE, devices=1)]
    box.agent = start_agent(toml, directory / "agent.log", collector, "edge")
    bridge_toml = bridge_config(
        directory,
        port,
        bootstrap,
        "edge",
        node=node,
        kafka_prefix=kafka_prefix,
        spool_name=f"{node}.db",
    )
    box.bridge = start_bridge(bridge_toml, directory / "bridge.log", collector)
    return box


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[Fleet]:
    directory = tmp_path_factory.mktemp("fleet")
    kafka_prefix = f"t.fleet{time.time_ns() % 10**10}"
    boxes: list[Box] = []
    try:
        for node in NODES:
            boxes.append(start_box(directory / node, node, kafka_bootstrap, kafka_prefix))
        yield Fleet(boxes, kafka_bootstrap, kafka_prefix, directory)
    finally:
        for box in boxes:
            for service in (box.bridge, box.agent):
                if service is not None:
                    service.stop()
            box.collector.__exit__()
            box.broker.terminate()
            box.broker.wait(10)


def test_good_candidate_is_shadowed_then_promoted_on_its_cohort_only(fleet: Fleet) -> None:
    a, b, c = fleet.boxes
    fleet.publish(
        release(
            fleet.directory, "ro-good", 2, stream="good", cohort=Cohort(nodes=("box-a", "box-b"))
        )
    )
    for box in (a, b):
        box.wait_transition("good", "shadow_started", 2)
    ignored = c.wait_transition("good", "ignored", 2)
    assert "cohort" in ignored["reason"]
    for box in (a, b):
        promoted = box.feed_until("good", "promoted", 2)
        assert promoted["figures"]["rank_correlation"] == 1.0
        assert promoted["figures"]["events"] >= 300
        wait_for(lambda box=box: box.serving("good") == 2, 10, "status showing v2")
        box.feed("good", 50)  # on probation: v1 scores beside v2 as reference
    c.feed("good", 400)
    # Shadow results travel inside the scored events; outside the cohort there are none.
    shadowed = [d for d in a.scored("good") if "shadow" in d]
    assert shadowed
    assert {d["shadow"]["model"]["version"] for d in shadowed} == {2, 1}  # candidate, reference
    assert {d["model"]["version"] for d in a.scored("good")} == {1, 2}
    assert not [d for d in c.scored("good") if "shadow" in d]
    assert {d["model"]["version"] for d in c.scored("good")} == {1}
    assert c.transitions("good", "shadow_started") == []

    view = fleet.view(
        lambda v: (
            all(n in v and "good" in v[n].streams for n in NODES)
            and v["box-a"].streams["good"].active == 2
            and v["box-b"].streams["good"].active == 2
        ),
        "the fleet view to show v2 on box-a and box-b",
    )
    assert view["box-c"].streams["good"].active == 1
    assert "cohort" in (view["box-c"].streams["good"].last or {})["reason"]
    assert view["box-a"].streams["good"].previous == [1]

    # The agent keeps serving what was promoted across a restart, not the configured v1.
    assert a.agent is not None
    a.agent.terminate()
    a.agent = start_agent(a.agent_toml, a.directory / "agent2.log", a.collector, "edge")
    assert a.serving("good") == 2

    # A later release widens the cohort to every box: box-c takes it up too.
    fleet.publish(release(fleet.directory, "ro-good", 3, stream="good", cohort=Cohort(percent=100)))
    c.wait_transition("good", "shadow_started", 3)
    c.feed_until("good", "promoted", 3)
    view = fleet.view(
        lambda v: v["box-c"].streams["good"].active == 3, "the fleet view to show v3 on box-c"
    )
    assert view["box-c"].streams["good"].previous == [1]


def test_bad_candidate_is_rejected_on_every_box(fleet: Fleet) -> None:
    fleet.publish(release(fleet.directory, "ro-bad", 2, stream="bad", threshold=BAD_THRESHOLD))
    for box in fleet.boxes:
        box.wait_transition("bad", "shadow_started", 2)
    for box in fleet.boxes:
        rejected = box.feed_until("bad", "rejected", 2)
        assert "alert rate" in rejected["reason"]
        assert rejected["figures"]["new_alert_rate"] > 0.4
        assert rejected["figures"]["old_alert_rate"] < 0.1
        assert rejected["active"] == 1
        box.feed("bad", 50)
        assert {d["model"]["version"] for d in box.scored("bad")} == {1}
        alerts = [d for d in box.collector.documents("alerts") if d["stream"] == "bad"]
        assert all(d["model"]["version"] == 1 for d in alerts)  # no candidate alert escaped
    view = fleet.settled("bad", "rejected")
    for node in NODES:
        last = view[node].streams["bad"].last or {}
        assert "alert rate" in last["reason"]
        assert last["figures"]["new_alert_rate"] > 0.4
        assert view[node].streams["bad"].active == 1


def test_promoted_model_that_turns_bad_is_rolled_back(fleet: Fleet) -> None:
    fleet.publish(
        release(fleet.directory, "ro-drift", 2, stream="drift", threshold=DRIFTING_THRESHOLD)
    )
    for box in fleet.boxes:
        box.wait_transition("drift", "shadow_started", 2)
        box.feed_until("drift", "promoted", 2)
    for box in fleet.boxes:
        # The inputs drift: the promoted (more sensitive) model alerts far more than v1.
        rolled = box.feed_until("drift", "rolled_back", 1, drift=DRIFT)
        assert rolled["from_version"] == 2
        assert rolled["reason"].startswith("on probation: alert rate")
        assert rolled["figures"]["new_alert_rate"] > rolled["figures"]["alert_rate_band"][1]
        wait_for(lambda box=box: box.serving("drift") == 1, 10, "v1 serving again")
        box.feed("drift", 50)
        assert box.scored("drift")[-1]["model"]["version"] == 1
    view = fleet.settled("drift", "rolled_back")
    for node in NODES:
        stream = view[node].streams["drift"]
        assert (stream.active, stream.state) == (1, "serving")
        assert "on probation: alert rate" in (stream.last or {})["reason"]
    # The same through the command line: one line per box (printed: the README's example).
    command = [sys.executable, "-m", "models.cli", "fleet", "--config", str(fleet.central)]
    text = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    print(text)
    lines = text.splitlines()
    assert len(lines) == 1 + len(NODES)
    for node, line in zip(NODES, lines[1:], strict=True):
        assert line.startswith(node)
        assert "drift=ro-drift v1/-/- serving; rolled_back v2->v1" in line
    listed = json.loads(
        subprocess.run([*command, "--json"], capture_output=True, text=True, check=True).stdout
    )
    assert [box["node"] for box in listed] == list(NODES)
    # A rolled-back version is not tried again (the retained v2 comes back on a restart).
    a = fleet.boxes[0]
    assert a.agent is not None
    a.agent.terminate()
    a.agent = start_agent(a.agent_toml, a.directory / "agent3.log", a.collector, "edge")
    wait_for(
        lambda: "ignored v2: v2 was rolled back; not tried again" in a.agent.log_text(),
        30,
        "the retained v2 to be seen and ignored",
    )
    a.feed("drift", 20)
    assert a.serving("drift") == 1
    assert a.scored("drift")[-1]["model"]["version"] == 1
    assert len(a.transitions("drift", "shadow_started")) == 1  # v2's, before the restart


def test_rollback_instruction_from_the_centre_and_forgeries(fleet: Fleet) -> None:
    fleet.publish(
        release(
            fleet.directory,
            "ro-instr",
            2,
            stream="instr",
            rules={"probation_events": 0, "probation_s": 0},
        )
    )
    for box in fleet.boxes:
        box.wait_transition("instr", "shadow_started", 2)
        box.feed_until("instr", "promoted", 2)
    key = instruction_key("ro-instr")
    signed = json.loads(
        sign_instruction(
            new_instruction("ro-instr", 1, reason="fraud team", nodes=("box-a", "box-b")),
            load_private_key(DEV_PRIVATE),
        )
    )
    unsigned = {k: v for k, v in signed.items() if k not in ("signature", "key_id")}
    tampered = dict(signed, payload=signed["payload"].replace('"box-a", "box-b"', '"box-c"'))
    for forgery, reason in ((unsigned, "unsigned"), (tampered, "bad_signature")):
        fleet.publish_raw(key, json.dumps(forgery).encode())
        for box in fleet.boxes:
            wait_for(
                lambda box=box, reason=reason: any(
                    d["figures"].get("refusal") == reason
                    for d in box.transitions("instr", "instruction_refused")
                ),
                30,
                f"{reason} refused on {box.node}",
            )
            counted = f'edgewatch_agent_instructions_refused_total{{reason="{reason}"}}'
            assert scrape(box.metrics_port).get(counted) == 1.0
            assert box.serving("instr") == 2
    # The genuine one, signed and published by the command the centre uses.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "models.cli",
            "serve-version",
            "--config",
            str(fleet.central),
            "--model",
            "ro-instr",
            "--version",
            "1",
            "--key",
            str(DEV_PRIVATE),
            "--nodes",
            "box-a,box-b",
            "--reason",
            "fraud team",
        ],
        check=True,
        capture_output=True,
    )
    for box in fleet.boxes[:2]:
        decision = box.wait_transition("instr", "rolled_back", 1)
        assert decision["reason"] == "instruction from the centre: fraud team"
        wait_for(lambda box=box: box.serving("instr") == 1, 10, "v1 served")
        box.feed("instr", 20)
        assert box.scored("instr")[-1]["model"]["version"] == 1
    c = fleet.boxes[2]
    c.feed("instr", 20)  # the instruction names box-a and box-b only
    assert c.scored("instr")[-1]["model"]["version"] == 2
    assert c.transitions("instr", "rolled_back") == []
    view = fleet.view(lambda v: v["box-a"].streams["instr"].active == 1, "instructed rollback")
    assert "fraud team" in (view["box-a"].streams["instr"].last or {})["reason"]
    assert view["box-c"].streams["instr"].active == 2


def test_hot_swap_under_load_loses_and_repeats_nothing(
    tmp_path: Path, mqtt_port: int, mqtt_prefix: str
) -> None:
    total, rate = 20_000, 2000
    v1 = release(tmp_path, "ro-load", 1)
    streams = f'[streams.payments]\nbundle = "{v1}"\nmodel = "ro-load"\n'
    rules = (
        "[rollout]\n[rollout.rules]\nshadow_events = 1500\nshadow_s = 0\n"
        "probation_events = 1000\nprobation_s = 0\ncheck_events = 500\n"
        "batch_latency_budget_ms = 1000\n"
    )
    config = agent_config(tmp_path, mqtt_port, mqtt_prefix, streams=streams, extra=rules)
    rows = [json.loads(m.payload) for m in messages_from_file(SAMPLE, devices=1)]
    items = []
    for i in range(total):
        row = rows[i % len(rows)] | {"event_id": f"load-{i}"}
        items.append((f"{mqtt_prefix}/dev-{i % 8}/raw/payments", json.dumps(row).encode()))
    releases = [release(tmp_path, "ro-load", v) for v in (2, 3, 4)]
    model_topic = f"{mqtt_prefix}/models/ro-load"
    with Collector(mqtt_port, [f"{mqtt_prefix}/#"]) as collector:
        agent = start_agent(config, tmp_path / "agent.log", collector, mqtt_prefix)
        try:
            sender = threading.Thread(
                target=publish_all, args=(mqtt_port, items, rate), daemon=True
            )
            sender.start()
            for version, path in zip((2, 3, 4), releases, strict=True):
                publish_retained(mqtt_port, model_topic, path.read_bytes())
                wait_for(
                    lambda v=version: any(
                        d["kind"] == "promoted" and d["to_version"] == v
                        for d in collector.documents("rollout")
                    ),
                    60,
                    f"v{version} promoted",
                )
            promoted_at = collector.count("scored")
            sender.join(300)
            assert not sender.is_alive(), "the stream was not published within 300 s"
            # A shared box may be slow; what must not happen is scoring that stops short.
            seen, stalled_since = -1, time.monotonic()
            while collector.count("scored") < total:
                if collector.count("scored") != seen:
                    seen, stalled_since = collector.count("scored"), time.monotonic()
                assert time.monotonic() - stalled_since < 30, (
                    f"scoring stopped at {seen} of {total}; agent alive: {agent.alive()}; "
                    f"log:\n{agent.log_text()[-3000:]}"
                )
                time.sleep(0.2)
            time.sleep(1.0)  # anything scored twice would arrive by now
        finally:
            agent.stop()
            publish_retained(mqtt_port, model_topic, b"")  # clear the retained one
        scored = collector.documents("scored")
        arrivals = collector.arrivals("scored")
    ids = [d["event_id"] for d in scored]
    assert set(ids) == {f"load-{i}" for i in range(total)}, "events lost"
    assert len(ids) == total, f"{len(ids) - len(set(ids))} events scored twice"
    assert promoted_at < total, "the third promotion came after the stream"
    versions = {d["model"]["version"] for d in scored}
    assert versions == {1, 2, 3, 4}
    by_device: dict[str, list[int]] = {}
    for d in scored:
        by_device.setdefault(d["device"], []).append(d["model"]["version"])
    for device, seq in by_device.items():
        assert seq == sorted(seq), f"{device}: a swap was not between batches"
    longest = max(later - earlier for earlier, later in itertools.pairwise(arrivals))
    at_swaps = [
        arrivals[i] - arrivals[i - 1]
        for i in range(1, len(scored))
        if scored[i]["model"]["version"] != scored[i - 1]["model"]["version"]
    ]
    per_version = [sum(1 for d in scored if d["model"]["version"] == v) for v in (1, 2, 3, 4)]
    print(
        f"hot swap under load: {total} events at {rate}/s, 3 promotions, longest gap in "
        f"scored output {longest * 1000:.1f} ms (at the swaps: "
        f"{', '.join(f'{gap * 1000:.1f}' for gap in at_swaps)} ms), "
        f"events per version {per_version}"
    )
    assert longest < 5.0
