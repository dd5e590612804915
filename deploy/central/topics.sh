#!/usr/bin/env bash
# Create the edgewatch topics on a central Kafka cluster (run once per cluster; idempotent).
# Columns of each topic: deploy/central/topics.md. The dev stack does not need this script
# (its broker auto-creates topics; tests create theirs with the admin API).
#
#   BOOTSTRAP=kafka:9092 PARTITIONS=6 REPLICAS=3 deploy/central/topics.sh
#
# Partitions are the unit of parallelism: a central job runs with parallelism up to the
# partition count of its input topics. status and models are compacted (the latest record per
# key is what matters); labels are kept as long as the jobs' state TTL needs them replayable.
set -euo pipefail
BOOTSTRAP="${BOOTSTRAP:-kafka:9092}"
PARTITIONS="${PARTITIONS:-6}"
REPLICAS="${REPLICAS:-1}"
TOPICS="${KAFKA_TOPICS_SH:-/opt/kafka/bin/kafka-topics.sh}"
DAY_MS=86400000
create() {
  "$TOPICS" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
    --replication-factor "$REPLICAS" "$@"
}
for stream in payments sensors; do
  create --topic "edge.raw.$stream" --partitions "$PARTITIONS" --config retention.ms=$((14 * DAY_MS))
  create --topic "edge.scored.$stream" --partitions "$PARTITIONS" --config retention.ms=$((7 * DAY_MS))
  create --topic "train.$stream" --partitions "$PARTITIONS" --config retention.ms=-1
done
create --topic edge.alerts --partitions 3
create --topic edge.deadletter --partitions 3 --config retention.ms=$((30 * DAY_MS))
create --topic edge.labels --partitions "$PARTITIONS" --config retention.ms=$((30 * DAY_MS))
create --topic edge.monitoring --partitions 3 --config retention.ms=$((90 * DAY_MS))
create --topic edge.rollouts --partitions 1 --config retention.ms=-1
create --topic edge.status --partitions 1 --config cleanup.policy=compact
create --topic edge.models --partitions 1 --config cleanup.policy=compact \
  --config max.message.bytes=16777216
