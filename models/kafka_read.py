"""Reading a Kafka topic from its beginning to the end it had when reading started.

A bounded read for batch jobs (retraining, finding the champion): a consumer with
``isolation.level=read_committed`` (records of aborted or still-open transactions are never
returned, so a job that writes its sink transactionally is read exactly once), partitions
assigned explicitly from the beginning (no group rebalance, nothing committed), and each
partition read up to the high watermark it had at the start, or to the end the consumer
reports for it (with read_committed that is the last stable offset). Records that arrive
later belong to the next run. The whole read is bounded by ``timeout_s``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from plumbing.errors import EdgewatchError
from plumbing.kafka import consumer_config
from plumbing.settings import KafkaSettings, LibrdkafkaValue

READ_COMMITTED_TO_END: dict[str, LibrdkafkaValue] = {
    "isolation.level": "read_committed",
    "enable.auto.commit": False,
    "enable.partition.eof": True,
    "fetch.max.bytes": 64 * 1024 * 1024,
}


class TopicReadError(EdgewatchError):
    """The topic could not be read to its end in time, or Kafka refused the read."""


@dataclass(frozen=True, slots=True)
class Record:
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    partition: int
    offset: int
    headers: list[tuple[str, Any]] | None = None  # as confluent-kafka returns them


def read_to_end(settings: KafkaSettings, topic: str, timeout_s: float = 60.0) -> list[Record]:
    """Every committed record of ``topic`` up to its end at the start; [] if it does not exist."""
    consumer = Consumer(
        consumer_config(
            settings,
            group_id=f"edgewatch-read-{uuid.uuid4().hex[:12]}",
            client_id="edgewatch-read",
            **READ_COMMITTED_TO_END,
        )
    )
    deadline = time.monotonic() + timeout_s
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=timeout_s)
        except KafkaException as exc:
            raise TopicReadError(f"cannot read the metadata of {topic}: {exc}") from exc
        info = metadata.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            return []
        ends: dict[int, int] = {}
        for partition in info.partitions:
            low, high = _watermarks(consumer, TopicPartition(topic, partition), deadline)
            if high > low:
                ends[partition] = high
        if not ends:
            return []
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        return _consume(consumer, topic, ends, deadline, timeout_s)
    finally:
        consumer.close()


# A topic just created (by a job's first write, or auto-created) has no leader for a moment.
_TRANSIENT = frozenset(
    {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
     KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._TRANSPORT, KafkaError.REQUEST_TIMED_OUT}
)  # fmt: skip


def _watermarks(consumer: Consumer, partition: TopicPartition, deadline: float) -> tuple[int, int]:
    """Low and high offsets, waiting out a partition that has no leader yet."""
    while True:
        try:
            low, high = consumer.get_watermark_offsets(
                partition, timeout=max(deadline - time.monotonic(), 0.1)
            )
            return int(low), int(high)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            transient = isinstance(error, KafkaError) and error.code() in _TRANSIENT
            if not transient or time.monotonic() > deadline:
                raise TopicReadError(f"{partition.topic}: {exc}") from exc
            time.sleep(0.2)


def _consume(
    consumer: Consumer, topic: str, ends: dict[int, int], deadline: float, timeout_s: float
) -> list[Record]:
    records: list[Record] = []
    pending = set(ends)
    while pending:
        if time.monotonic() > deadline:
            raise TopicReadError(
                f"{topic}: partitions {sorted(pending)} not read to their end in {timeout_s:g} s"
            )
        for message in consumer.consume(num_messages=10_000, timeout=0.5):
            error = message.error()
            partition = message.partition()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(partition)
                    continue
                raise TopicReadError(f"{topic}: {error}")
            offset = message.offset() or 0
            if partition not in pending or offset >= ends[partition]:
                pending.discard(partition)
                continue
            records.append(
                Record(
                    message.key(),
                    message.value(),
                    message.timestamp()[1],
                    partition,
                    offset,
                    _header_list(message.headers()),
                )
            )
            if offset + 1 >= ends[partition]:
                pending.discard(partition)
    return records


def _header_list(headers: Any) -> list[tuple[str, Any]] | None:
    return list(headers.items()) if isinstance(headers, dict) else headers
