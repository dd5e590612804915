"""The central jobs of deploy/central/*.sql on the real Kafka and the real Flink engine.

Each test gives its jobs topics of their own (a unique topic prefix through the job files'
placeholders), writes records the way the bridge does (key = device, headers mqtt_topic,
node_id, event_id) and the back office does (edge.labels, key = event_id), submits the job
with ``models.central.jobs.Jobs`` (as ``edgewatch-central jobs up`` does) and reads the
output topic from the outside with ``isolation.level=read_committed``, comparing rows by
event id. Checkpoints every 2 s keep the tests short: exactly-once sinks commit on
checkpoints, so rows show up about one interval after they are computed.

"Nothing extra" is checked by reading on for a quiet period of several checkpoint
intervals after the last expected row appeared.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from models.central.jobs import Jobs
from models.central.settings import CentralSettings

pytestmark = [pytest.mark.central, pytest.mark.broker]

CHECKPOINT_S = 2.0
QUIET_S = 4 * CHECKPOINT_S  # no further row for this long after the last expected one
V = [f"V{k}" for k in range(1, 29)]
TRAIN_PAYMENT_COLUMNS = {
    "event_id", "device", "ts", "label", "labelled_at", "card_last4", "hour_of_day",
    "log_amount", *V, "Amount",
}  # fmt: skip


@dataclass
class Central:
    """One test's view of the engine: its Jobs, its topics and the Kafka to reach them."""

    jobs: Jobs
    settings: CentralSettings
    bootstrap: str
    stack: Any

    def topic(self, name: str) -> str:
        """The test's own name of a job placeholder's topic, e.g. 'raw_payments_topic'."""
        return self.settings.job_variables("any")[name]

    def topics(self, *names: str) -> list[str]:
        """The test's topics for these placeholders, created (Flink refuses a missing one)."""
        topics = [self.topic(name) for name in names]
        create_topics(self.bootstrap, topics)
        return topics


@pytest.fixture
def central(
    central_stack: Any, kafka_topic: Callable[[str], str], tmp_path: Path
) -> Iterator[Central]:
    """Jobs configured for this test alone: unique topic prefixes, consumer groups and
    transactional ids, checkpoints in the test's own directory; jobs cancelled after."""
    prefix = kafka_topic("central")
    settings = CentralSettings(
        kafka={"bootstrap_servers": central_stack.state.kafka_bootstrap},
        central={
            "sql_gateway": central_stack.state.sql_gateway,
            "flink_rest": central_stack.state.flink_rest,
            "checkpoint_dir": tmp_path / "checkpoints",
            "checkpoint_interval": f"{CHECKPOINT_S:.0f} s",
            "idle_timeout": "2 s",
            "watermark_delay_s": 5,
            "topic_prefix": prefix,
            "train_prefix": f"{prefix}.train",
            "group_id_prefix": prefix,
            "transactional_id_prefix": prefix,
            # An open transaction of a killed job blocks read_committed readers until the
            # restarted job aborts it, or until this timeout at the latest.
            "transaction_timeout_ms": 60_000,
        },
    )
    view = Central(Jobs(settings), settings, central_stack.state.kafka_bootstrap, central_stack)
    yield view
    if central_stack.central_alive():
        view.jobs.down(["preprocess_payments", "preprocess_sensors", "monitor"])


def create_topics(bootstrap: str, names: list[str], partitions: int = 3) -> None:
    """Topics exist before a job subscribes to them (Flink refuses a missing topic)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions) for n in names])
    for future in futures.values():
        future.result(timeout=30)


class Writer:
    """Produces records as the bridge (raw, scored, dead-letters) and the back office do."""

    def __init__(self, bootstrap: str) -> None:
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})

    def raw(self, topic: str, device: str, payload: dict[str, Any] | bytes, event_id: str,
            stream: str = "payments") -> None:  # fmt: skip
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = [("mqtt_topic", f"edge/{device}/raw/{stream}".encode()),
                   ("node_id", b"box-1"), ("event_id", event_id.encode())]  # fmt: skip
        self.producer.produce(topic, key=device.encode(), value=body, headers=headers)

    def label(self, topic: str, event_id: str, label: int, labelled_at: float) -> None:
        body = {"event_id": event_id, "label": label, "labelled_at": labelled_at,
                "source": "chargeback"}  # fmt: skip
        self.producer.produce(topic, key=event_id.encode(), value=json.dumps(body).encode())

    def event(self, topic: str, device: str, document: dict[str, Any] | bytes,
              node: str) -> None:  # fmt: skip
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        self.producer.produce(topic, key=device.encode(), value=body,
                              headers=[("node_id", node.encode())])  # fmt: skip

    def flush(self) -> None:
        assert self.producer.flush(30) == 0


class Reader:
    """Reads a topic from its beginning with read_committed, as downstream consumers must."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": f"check-{topic}",
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "isolation.level": "read_committed", "topic.metadata.refresh.interval.ms": 1000,
        })  # fmt: skip
        self.consumer.subscribe([topic])
        self.records: list[tuple[bytes | None, bytes]] = []

    def poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for message in self.consumer.consume(1000, timeout=0.2):
                if message.error() is None:
                    self.records.append((message.key(), message.value()))

    def rows(self) -> list[dict[str, Any]]:
        return [json.loads(value) for _, value in self.records]

    def until(self, condition: Callable[[list[dict[str, Any]]], bool], timeout_s: float,
              what: str) -> list[dict[str, Any]]:  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while not condition(self.rows()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}; "
                                     f"got {len(self.records)} rows")  # fmt: skip
            self.poll(0.5)
        return self.rows()

    def quiet(self) -> list[dict[str, Any]]:
        """Everything, after reading on for QUIET_S (rows that should not exist show up)."""
        self.poll(QUIET_S)
        return self.rows()

    def close(self) -> None:
        self.consumer.close()


def payment(i: int, **extra: Any) -> dict[str, Any]:
    """A credit-card row as the replay sends it: event_id, ts, Time, V1..V28, Amount."""
    return {"event_id": f"p{i}", "ts": 1_764_500_000.0 + 3600 * i + 0.25, "Time": float(i),
            **{name: round(0.1 * k - 0.01 * i, 4) for k, name in enumerate(V, 1)},
            "Amount": 12.5 * i, **extra}  # fmt: skip


def expected_payment(document: dict[str, Any], device: str, label: int, labelled_at: float,
                     card_last4: str | None = None) -> dict[str, Any]:  # fmt: skip
    ts = document["ts"]
    return {
        "event_id": document["event_id"], "device": device, "ts": ts, "label": label,
        "labelled_at": labelled_at, "card_last4": card_last4,
        "hour_of_day": int(ts // 3600) % 24, "log_amount": math.log1p(document["Amount"]),
        **{name: document[name] for name in V}, "Amount": document["Amount"],
    }  # fmt: skip


def by_event(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["event_id"]: row for row in rows}


def assert_rows_equal(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert set(got) == set(want), f"columns differ: {set(got) ^ set(want)}"
    for name, value in want.items():
        if isinstance(value, float):
            assert got[name] == pytest.approx(value, rel=1e-12), name
        else:
            assert got[name] == value, name


def test_preprocess_payments_yields_exactly_the_labelled_deduplicated_masked_rows(
    central: Central,
) -> None:
    raw_topic, labels_topic, train_topic = central.topics(
        "raw_payments_topic", "labels_topic", "train_payments_topic"
    )
    writer, t0 = Writer(central.bootstrap), 1_796_000_000.0
    p = {i: payment(i) for i in range(8)}
    p[4] = payment(4, card_number="4111-1111 1111-4242", holder="Jane Q. Holder")
    p[5].pop("event_id")  # the id travels in the bridge's header only
    no_amount = payment(6)
    no_amount.pop("Amount")

    writer.label(labels_topic, "p0", 0, t0)  # a label before its event (out of order)
    writer.raw(raw_topic, "term-a", p[0], "p0")
    writer.raw(raw_topic, "term-a", p[1], "p1")
    writer.raw(raw_topic, "term-a", p[1], "p1")  # the bridge delivered it twice
    writer.raw(raw_topic, "term-b", p[2], "p2")  # its label comes much later
    writer.raw(raw_topic, "term-b", p[3], "p3")  # its label never comes
    writer.raw(raw_topic, "term-b", p[4], "p4")
    writer.raw(raw_topic, "term-a", b'{"event_id": "bad", "V1": 0.5, "Amount": ', "bad")
    writer.raw(raw_topic, "term-b", p[5], "p5")
    writer.raw(raw_topic, "term-a", no_amount, "p6")  # not a model input row: left out
    writer.label(labels_topic, "p1", 1, t0 + 1)
    writer.label(labels_topic, "p1", 0, t0 + 2)  # a second label: the first one counts
    writer.label(labels_topic, "p4", 1, t0 + 4)
    writer.label(labels_topic, "p5", 0, t0 + 5)
    writer.label(labels_topic, "bad", 1, t0 + 6)
    writer.label(labels_topic, "p6", 1, t0 + 7)
    writer.flush()

    submitted = central.jobs.submit("preprocess_payments", resume=False)
    assert submitted.job_id
    reader = Reader(central.bootstrap, train_topic)
    try:
        first = {"p0", "p1", "p4", "p5"}
        reader.until(lambda rows: first <= set(by_event(rows)), 120, f"rows {sorted(first)}")
        # Long after its event (processed and checkpointed): p2's label; p1 once more.
        writer.raw(raw_topic, "term-a", p[1], "p1")
        writer.label(labels_topic, "p2", 1, t0 + 86_400)
        writer.flush()
        reader.until(lambda rows: "p2" in by_event(rows), 60, "the late-labelled row p2")
        rows = reader.quiet()
        raw_values = b"".join(value for _, value in reader.records)
        keys = {row["event_id"]: key for (key, _), row in zip(reader.records, rows, strict=True)}
    finally:
        reader.close()

    counts = Counter(row["event_id"] for row in rows)
    assert counts == {"p0": 1, "p1": 1, "p2": 1, "p4": 1, "p5": 1}
    got = by_event(rows)
    devices = {0: "term-a", 1: "term-a", 2: "term-b", 4: "term-b", 5: "term-b"}
    labels = {0: (0, t0), 1: (1, t0 + 1), 2: (1, t0 + 86_400), 4: (1, t0 + 4), 5: (0, t0 + 5)}
    for i, device in devices.items():
        document = {**p[i], "event_id": f"p{i}"}
        want = expected_payment(document, device, *labels[i],
                                card_last4="4242" if i == 4 else None)  # fmt: skip
        assert_rows_equal(got[f"p{i}"], want)
        assert set(got[f"p{i}"]) == TRAIN_PAYMENT_COLUMNS
        assert keys[f"p{i}"] == device.encode()
    for personal in (b"Holder", b"holder", b"4111", b"card_number"):
        assert personal not in raw_values
    # The malformed record did not stop the job.
    assert [job.state for job in central.jobs.alive("preprocess_payments")] == ["RUNNING"]


def scored_event(
    node: str,
    version: int,
    scored_at: float,
    score: float,
    *,
    stream: str = "payments",
    shadow: float | None = None,
) -> dict[str, Any]:
    """A scored event as the agent writes it (plumbing contract), model by version; with
    ``shadow``, version 3 scored it too (a candidate in shadow)."""
    event = {"event_id": f"{node}-{version}-{scored_at}", "device": "term-a", "stream": stream,
             "ts": None, "scored_at": scored_at,
             "model": {"name": f"{stream}-fraud", "version": version, "sha256": "ab" * 32},
             "score": score, "threshold": 1.0, "anomaly": score >= 1.0,
             "contributions": {"V14": 0.5}}  # fmt: skip
    if shadow is not None:
        event["shadow"] = {"model": {"name": f"{stream}-fraud", "version": 3}, "score": shadow,
                           "anomaly": shadow >= 1.0}  # fmt: skip
    return event


def deadletter(reason: str, rejected_at: float, stream: str = "payments") -> dict[str, Any]:
    return {"event_id": f"{reason}-{rejected_at}", "reason": reason, "detail": "",
            "source_topic": f"edge/term-a/raw/{stream}", "payload_bytes": 3,
            "payload_preview": "{no", "rejected_by": "agent",
            "rejected_at": rejected_at}  # fmt: skip


def test_monitor_counts_each_minute_per_node_stream_and_model_version(central: Central) -> None:
    """Serving models and, where a box shadows a candidate, the candidate's own results."""
    scored_topic = f"{central.settings.central.topic_prefix}.scored.payments"
    deadletter_topic = central.topic("deadletter_topic")
    out_topic = central.topic("monitoring_topic")
    create_topics(central.bootstrap, [scored_topic, deadletter_topic, out_topic])
    writer = Writer(central.bootstrap)
    t0 = 1_764_500_400.0  # a minute's start
    # Every record on one device key, so one partition and a deterministic watermark.
    for node in ("box-1", "box-2"):
        for version in (1, 2):
            scores = [0.2, 0.4, 1.5] if version == 1 else [0.1, 2.5]
            # box-1 shadows version 3 beside version 2 for these two events.
            shadows = [0.6, 1.4] if (node, version) == ("box-1", 2) else [None] * len(scores)
            for k, (score, shadow) in enumerate(zip(scores, shadows, strict=True)):
                event = scored_event(node, version, t0 + 10 + k, score, shadow=shadow)
                writer.event(scored_topic, "term-a", event, node)
            # Out of order within the watermark delay: still minute t0.
            writer.event(scored_topic, "term-a", scored_event(node, version, t0 + 59, 0.3), node)
            writer.event(scored_topic, "term-a", scored_event(node, version, t0 + 55, 0.9), node)
            writer.event(scored_topic, "term-a", scored_event(node, version, t0 + 61, 1.2), node)
    writer.event(scored_topic, "term-a", b'{"event_id": "torn', "box-1")  # skipped
    writer.event(deadletter_topic, "term-a", deadletter("invalid_json", t0 + 1), "box-1")
    writer.event(deadletter_topic, "term-a", deadletter("invalid_json", t0 + 2), "box-1")
    writer.event(deadletter_topic, "term-a", deadletter("no_model", t0 + 3, "sensors"), "box-2")
    # Event time moves on: the minutes above close (the ones these open never do here).
    writer.event(scored_topic, "term-a", scored_event("box-1", 1, t0 + 600, 0.1), "box-1")
    writer.event(deadletter_topic, "term-a", deadletter("invalid_json", t0 + 600), "box-1")
    writer.flush()

    central.jobs.submit("monitor", resume=False)
    reader = Reader(central.bootstrap, out_topic)

    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        return (row["kind"], row["window_start"], row["node"], row["stream"],
                row["model_version"], row["reason"])  # fmt: skip

    try:
        reader.until(lambda rows: len(rows) >= 11, 120, "the 11 rows of the first minutes")
        # Too late: its minute was emitted already, so it must change nothing. The event
        # after it (same partition) closes minute t0 + 600: once that row is out, the late
        # one has been processed.
        writer.event(scored_topic, "term-a", scored_event("box-1", 1, t0 + 20, 9.0), "box-1")
        writer.event(scored_topic, "term-a", scored_event("box-1", 1, t0 + 1200, 0.1), "box-1")
        writer.flush()
        reader.until(lambda rows: len(rows) >= 12, 60, "the row of minute t0 + 600")
        rows = reader.quiet()
    finally:
        reader.close()

    want = []
    for node in ("box-1", "box-2"):
        for version, (events, alerts, scores) in {
            1: (5, 1, [0.2, 0.4, 1.5, 0.3, 0.9]), 2: (4, 1, [0.1, 2.5, 0.3, 0.9])
        }.items():  # fmt: skip
            want.append({"kind": "scored", "window_start": t0, "window_end": t0 + 60,
                         "node": node, "stream": "payments", "model_name": "payments-fraud",
                         "model_version": version, "reason": None, "events": events,
                         "alerts": alerts, "alert_rate": alerts / events,
                         "score_mean": sum(scores) / len(scores),
                         "score_max": max(scores)})  # fmt: skip
            want.append({"kind": "scored", "window_start": t0 + 60, "window_end": t0 + 120,
                         "node": node, "stream": "payments", "model_name": "payments-fraud",
                         "model_version": version, "reason": None, "events": 1, "alerts": 1,
                         "alert_rate": 1.0, "score_mean": 1.2, "score_max": 1.2})  # fmt: skip
    empty = {"model_name": None, "model_version": None, "alerts": None, "alert_rate": None,
             "score_mean": None, "score_max": None}  # fmt: skip
    want += [
        {"kind": "deadletter", "window_start": t0, "window_end": t0 + 60, "node": "box-1",
         "stream": "payments", "reason": "invalid_json", "events": 2, **empty},
        {"kind": "deadletter", "window_start": t0, "window_end": t0 + 60, "node": "box-2",
         "stream": "sensors", "reason": "no_model", "events": 1, **empty},
    ]  # fmt: skip
    want.append({"kind": "shadow", "window_start": t0, "window_end": t0 + 60, "node": "box-1",
                 "stream": "payments", "model_name": "payments-fraud", "model_version": 3,
                 "reason": None, "events": 2, "alerts": 1, "alert_rate": 0.5,
                 "score_mean": 1.0, "score_max": 1.4})  # fmt: skip
    want.append({"kind": "scored", "window_start": t0 + 600, "window_end": t0 + 660,
                 "node": "box-1", "stream": "payments", "model_name": "payments-fraud",
                 "model_version": 1, "reason": None, "events": 1, "alerts": 0,
                 "alert_rate": 0.0, "score_mean": 0.1, "score_max": 0.1})  # fmt: skip
    want_by_key = {key(row): row for row in want}
    assert len(rows) == len(want_by_key) == 12
    assert sorted(map(key, rows)) == sorted(want_by_key)
    for row in rows:
        assert_rows_equal(row, want_by_key[key(row)])


def test_preprocess_survives_kill_9_of_the_engine_and_resumes_from_its_last_checkpoint(
    central: Central,
) -> None:
    raw_topic, labels_topic, train_topic = central.topics(
        "raw_payments_topic", "labels_topic", "train_payments_topic"
    )
    total, rate = 3000, 100.0
    labelled = {f"p{i}" for i in range(total) if i % 5 != 4}  # every 5th never labelled
    central.jobs.submit("preprocess_payments", resume=False)

    def produce() -> None:
        """Events at ``rate``; each label 20 events behind its event; some sent twice."""
        writer, started = Writer(central.bootstrap), time.monotonic()
        for i in range(total + 20):
            if i < total:
                document = payment(i)
                writer.raw(raw_topic, f"term-{i % 4}", document, document["event_id"])
                if i % 7 == 0:
                    writer.raw(raw_topic, f"term-{i % 4}", document, document["event_id"])
            late = f"p{i - 20}"
            if late in labelled:
                writer.label(labels_topic, late, (i - 20) % 2, 1_796_000_000.0 + i)
                if i % 11 == 0:
                    writer.label(labels_topic, late, (i - 20) % 2, 1_796_000_000.0 + i)
            writer.producer.poll(0)
            time.sleep(max(0.0, started + (i + 1) / rate - time.monotonic()))
        writer.flush()

    producer = threading.Thread(target=produce, name="produce", daemon=True)
    producer.start()
    reader = Reader(central.bootstrap, train_topic)
    try:
        reader.until(lambda rows: len(rows) >= 200, 120, "200 committed rows before the kill")
        assert producer.is_alive(), "the kill must happen while events still flow"
        central.stack.stop_central(hard=True)  # SIGKILL to JobManager, TaskManager, gateway
        assert not central.stack.central_alive()
        central.stack.start_central()
        resumed = central.jobs.submit("preprocess_payments", resume=True)
        assert resumed.restored_from is not None
        assert resumed.restored_from.name.startswith("chk-")
        producer.join(timeout=120)
        assert not producer.is_alive()
        rows = reader.until(lambda rows: labelled <= {row["event_id"] for row in rows}, 180,
                            f"all {len(labelled)} labelled events")  # fmt: skip
        rows = reader.quiet()
    finally:
        reader.close()

    counts = Counter(row["event_id"] for row in rows)
    assert set(counts) == labelled  # deduplicated by event_id: exactly the expected set
    assert max(counts.values()) == 1  # and, read_committed, not even a duplicate row
    assert all(set(row) == TRAIN_PAYMENT_COLUMNS for row in rows)


CHANNELS = ["Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature",
            "Thermocouple", "Voltage", "Volume Flow RateRMS"]  # fmt: skip


def test_preprocess_sensors_writes_each_complete_reading_once(central: Central) -> None:
    raw_topic, train_topic = central.topics("raw_sensors_topic", "train_sensors_topic")
    writer = Writer(central.bootstrap)
    readings = {i: {"event_id": f"s{i}", "ts": 1_796_000_000.0 + i,
                    "datetime": "2020-03-09 10:14:33",
                    **{name: round(i + k / 10, 3) for k, name in enumerate(CHANNELS)}}
                for i in range(4)}  # fmt: skip
    readings[3].pop("Current")  # a channel missing: not a training row
    for i in (0, 1, 1, 2, 3, 0):  # s1 and s0 delivered twice
        writer.raw(raw_topic, "pump-7", readings[i], f"s{i}", stream="sensors")
    writer.raw(raw_topic, "pump-7", b"not json at all", "junk", stream="sensors")
    writer.flush()

    central.jobs.submit("preprocess_sensors", resume=False)
    reader = Reader(central.bootstrap, train_topic)
    try:
        reader.until(lambda rows: len(rows) >= 3, 120, "3 sensor rows")
        writer.raw(raw_topic, "pump-7", readings[2], "s2", stream="sensors")  # late duplicate
        writer.flush()
        rows = reader.quiet()
    finally:
        reader.close()

    assert sorted(row["event_id"] for row in rows) == ["s0", "s1", "s2"]
    for row in rows:
        want = {key: value for key, value in readings[int(row["event_id"][1:])].items()
                if key != "datetime"}  # fmt: skip
        assert_rows_equal(row, {**want, "device": "pump-7"})
