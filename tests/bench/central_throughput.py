"""Central preprocess job throughput against a plain confluent-kafka loop.

    python tests/bench/central_throughput.py --json

Starts its own stack with the central engine (Kafka, Flink JobManager + TaskManager, SQL
Gateway; ``deploy/dev/stack.py``), fills ``{prefix}.raw.payments`` with ``--events``
credit-card payments (the data set's rows, ids of their own, a card number and holder on
every 10th) and ``{prefix}.labels`` with one label per payment, then, for ``--rounds``
rounds, alternately:

1. preprocess: submits ``deploy/central/preprocess_payments.sql`` unchanged (through
   ``models.central.jobs.Jobs``, as ``edgewatch-central jobs up`` does; a consumer group of
   the round's own, so it reads the backlog from the beginning) and reads the round's
   ``train.payments`` topic with read_committed until every payment is there, then cancels
   the job. Rate = rows / span of the rows' Kafka timestamps (the sink's send times), so
   job start-up and the last checkpoint's commit wait are not counted and nothing polls the
   engine meanwhile.
2. baseline: one Python process, confluent-kafka consumer → producer, doing the same
   transform without the join (dedupe by event id in a set, drop ``holder``, card number to
   its last four, ``hour_of_day``, ``log_amount``; acks=all, idempotent, no transactions)
   from the same raw topic into a topic of the round's own; same rate measurement.

The first round runs on a fresh TaskManager (class loading, JIT warm-up): it is reported as
``preprocess_cold_events_per_s``; the headline figures are medians of the other rounds, as
a long-running job sees them. ``*_steady_*`` rates leave out each run's first 10 % of rows.
The machine may be shared: ``load_average_1m`` says how busy it was. ``engine_rss_mb`` is
the peak resident memory (VmHWM) of the JobManager and TaskManager JVMs together after all
rounds; the SQL Gateway is reported beside it. The goal: at least 15,000 events/s, so one
job keeps up with a box's bridge at full rate.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import REPO, peak_rss_mb, steady_harness
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from agent.replay import messages_from_file
from models.central.jobs import Jobs
from models.central.settings import CentralSettings
from plumbing.events import dumps, loads
from tests.conftest import DATASETS, load_stack_module

GOAL_EVENTS_PER_S = 15_000
PARTITIONS = 3
V = [f"V{k}" for k in range(1, 29)]
NON_DIGIT = re.compile(r"[^0-9]")


@contextlib.contextmanager
def central_stack() -> Iterator[Any]:
    stack = load_stack_module().Stack(Path(tempfile.mkdtemp(prefix="edgewatch-central-bench-")))
    stack.up(central=True)
    try:
        yield stack
    finally:
        stack.destroy()


def payments(count: int) -> list[tuple[bytes, bytes, str]]:
    """(device key, payload, event id): the credit-card rows, cycled, each id unique."""
    source = DATASETS / "creditcard" / "creditcard_head.csv"
    if not source.exists():
        source = REPO / "models" / "samples" / "payments-holdout.csv"
    rows = [loads(m.payload) for m in messages_from_file(source)]
    out = []
    for i in range(count):
        document = {**rows[i % len(rows)], "event_id": f"b{i}", "ts": 1.7e9 + i * 0.01}
        if i % 10 == 0:
            document |= {"card_number": f"4111 1111 1111 {i % 10_000:04d}", "holder": "A B"}
        out.append((f"term-{i % 16}".encode(), dumps(document), f"b{i}"))
    return out


def produce(producer: Producer, topic: str, key: bytes, value: bytes,
            headers: list[tuple[str, bytes]] | None = None) -> None:  # fmt: skip
    """One record; waits for room when the producer's queue is full."""
    while True:
        try:
            producer.produce(topic, key=key, value=value, headers=headers)
            break
        except BufferError:
            producer.poll(0.05)
    producer.poll(0)


def fill(bootstrap: str, raw: str, labels: str, events: list[tuple[bytes, bytes, str]]) -> None:
    """The backlog, written as the bridge (key, event_id header) and back office do."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20,
                         "queue.buffering.max.messages": 500_000})  # fmt: skip
    for key, payload, event_id in events:
        headers = [("node_id", b"bench"), ("event_id", event_id.encode())]
        produce(producer, raw, key, payload, headers)
        label = {"event_id": event_id, "label": int(event_id[1:]) % 2, "labelled_at": 1.8e9,
                 "source": "bench"}  # fmt: skip
        produce(producer, labels, event_id.encode(), dumps(label))
    assert producer.flush(120) == 0


def scan(bootstrap: str, topic: str, expected: int, timeout_s: float) -> list[float]:
    """Kafka timestamps (s) of the committed records of ``topic``, up to ``expected`` of
    them: the sink's send times."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "isolation.level": "read_committed"})  # fmt: skip
    consumer.subscribe([topic])
    stamps: list[float] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(stamps) < expected and time.monotonic() < deadline:
            for message in consumer.consume(10_000, timeout=0.5):
                if message.error() is None:
                    stamps.append(message.timestamp()[1] / 1000)
    finally:
        consumer.close()
    return sorted(stamps)


def rates(stamps: list[float], expected: int, what: str) -> tuple[float, float]:
    """Rows per second over the whole span, and over the span of the last 90 % of the rows
    (without the start-up: JIT compilation, first fetches)."""
    if len(stamps) < expected or stamps[-1] <= stamps[0]:
        raise RuntimeError(f"{what}: {len(stamps)} of {expected} rows in Kafka")
    tenth = len(stamps) // 10
    return (len(stamps) / (stamps[-1] - stamps[0]),
            (len(stamps) - tenth) / (stamps[-1] - stamps[tenth]))  # fmt: skip


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def transform(document: Any, device: str, event_id: str, record_ts: float) -> dict[str, Any] | None:
    """preprocess_payments.sql's row without the label columns, in Python."""
    if not isinstance(document, dict) or not event_id:
        return None
    amount = document.get("Amount")
    if not isinstance(amount, int | float) or amount < 0:
        return None
    if any(not isinstance(document.get(name), int | float) for name in V):
        return None
    digits = NON_DIGIT.sub("", str(document.get("card_number") or ""))
    ts = document.get("ts")
    ts = float(ts) if isinstance(ts, int | float) else record_ts
    return {
        "event_id": event_id, "device": device, "ts": ts,
        "card_last4": digits[-4:] if len(digits) >= 12 else None,
        "hour_of_day": int(ts // 3600) % 24, "log_amount": math.log1p(amount),
        **{name: document[name] for name in V}, "Amount": amount,
    }  # fmt: skip


def baseline(bootstrap: str, raw: str, out: str, expected: int, timeout_s: float) -> None:
    """Consume → transform → produce until ``expected`` rows went out."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "enable.idempotence": True, "linger.ms": 5,
                         "queue.buffering.max.messages": 500_000})  # fmt: skip
    consumer.subscribe([raw])
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while len(seen) < expected and time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=0.5):
                if message.error() is not None:
                    continue
                headers = dict(message.headers() or [])
                event_id = headers.get("event_id", b"").decode()
                if event_id in seen:
                    continue
                try:
                    document = loads(message.value())
                except ValueError:
                    continue
                key = message.key() or b""
                row = transform(document, key.decode(), event_id, message.timestamp()[1] / 1000)
                if row is None:
                    continue
                seen.add(event_id)
                produce(producer, out, key, dumps(row))
    finally:
        consumer.close()
    assert producer.flush(60) == 0


def job_round(
    stack: Any, prefix: str, round_: int, interval: str, expected: int
) -> tuple[list[float], float]:
    """The preprocess job over the whole backlog (``expected`` payments) into a topic of this
    round's own (its own consumer group, so it starts from the beginning); the output's
    timestamps and the submit time."""
    state = stack.state
    name = f"{prefix}-r{round_}"
    settings = CentralSettings(
        kafka={"bootstrap_servers": state.kafka_bootstrap},
        central={"sql_gateway": state.sql_gateway, "flink_rest": state.flink_rest,
                 "checkpoint_dir": stack.checkpoint_dir / name, "checkpoint_interval": interval,
                 "topic_prefix": prefix, "train_prefix": name, "group_id_prefix": name,
                 "transactional_id_prefix": name},
    )  # fmt: skip
    jobs = Jobs(settings)
    submitted_at = time.time()
    jobs.submit("preprocess_payments", resume=False)
    train = settings.job_variables("preprocess_payments")["train_payments_topic"]
    stamps = scan(state.kafka_bootstrap, train, expected, timeout_s=900)
    jobs.cancel("preprocess_payments")
    return stamps, submitted_at


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--checkpoint-interval", default="5 s")
    args = parser.parse_args()
    events = payments(args.events)
    steady_harness()
    with central_stack() as stack:
        state = stack.state
        bootstrap, prefix = state.kafka_bootstrap, f"bench{uuid.uuid4().hex[:6]}"
        raw, labels = f"{prefix}.raw.payments", f"{prefix}.labels"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for future in admin.create_topics(
            [NewTopic(name, num_partitions=PARTITIONS) for name in (raw, labels)]
        ).values():
            future.result(timeout=30)
        del admin  # an idle client would retry the broker after the stack is gone
        started = time.monotonic()
        fill(bootstrap, raw, labels, events)
        fill_s = time.monotonic() - started

        load, job_rates, plain_rates, first_row_s = [load_average()], [], [], []
        for round_ in range(args.rounds):  # alternating, so drift hits both alike
            stamps, submitted_at = job_round(stack, prefix, round_, args.checkpoint_interval,
                                             args.events)  # fmt: skip
            job_rates.append(rates(stamps, args.events, f"preprocess round {round_}"))
            first_row_s.append(round(stamps[0] - submitted_at, 1))
            plain = f"{prefix}.baseline{round_}"
            baseline(bootstrap, raw, plain, args.events, timeout_s=900)
            plain_stamps = scan(bootstrap, plain, args.events, timeout_s=120)
            plain_rates.append(rates(plain_stamps, args.events, f"baseline round {round_}"))
            load.append(load_average())
        rss = {name: peak_rss_mb(pid) for name, pid in state.central_pids.items() if pid}
    # The first round runs on a fresh TaskManager (class loading, JIT): reported apart; the
    # figures are medians of the warm rounds, as a long-running job sees them.
    warm = slice(1, None) if args.rounds > 1 else slice(None)
    preprocess = statistics.median(r[0] for r in job_rates[warm])
    plain_rate = statistics.median(r[0] for r in plain_rates[warm])
    result = {
        "preprocess_events_per_s": round(preprocess),
        "baseline_events_per_s": round(plain_rate),
        "engine_rss_mb": round(rss.get("jobmanager", 0.0) + rss.get("taskmanager", 0.0), 1),
        "preprocess_vs_baseline": round(preprocess / plain_rate, 2),
        "preprocess_cold_events_per_s": round(job_rates[0][0]),
        "preprocess_steady_events_per_s": round(statistics.median(r[1] for r in job_rates[warm])),
        "baseline_steady_events_per_s": round(statistics.median(r[1] for r in plain_rates[warm])),
        "goal_events_per_s": GOAL_EVENTS_PER_S,
        "goal_met": preprocess >= GOAL_EVENTS_PER_S,
        "rss_mb": {name: round(value, 1) for name, value in rss.items()},
        "first_row_after_submit_s": first_row_s,
        "events": args.events,
        "verified_in_kafka": args.events,  # rates() raised unless every payment came out
        "backlog_fill_s": round(fill_s, 1),
        "checkpoint_interval": args.checkpoint_interval,
        "partitions": PARTITIONS,
        "parallelism": 1,
        "rounds": {
            "preprocess": [round(r[0]) for r in job_rates],
            "baseline": [round(r[0]) for r in plain_rates],
        },
        # The machine is shared: the 1-minute load average before the rounds and after each
        # (2 cores here; well above 2 means every figure is depressed).
        "load_average_1m": load,
    }
    print(json.dumps(result, indent=2) if args.json else result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
