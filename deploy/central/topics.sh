#!/usr/bin/env bash
# Create the central topics (run once per cluster). status and models are compacted:
# the latest record per key is what matters.
set -euo pipefail
BOOTSTRAP="${BOOTSTRAP:-kafka:9092}"
TOPICS=/opt/kafka/bin/kafka-topics.sh
create() { "$TOPICS" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists "$@"; }
for stream in payments sensors; do
  create --topic "edge.raw.$stream" --partitions 6 --config retention.ms=1209600000
  create --topic "edge.scored.$stream" --partitions 6
done
create --topic edge.alerts --partitions 3
create --topic edge.deadletter --partitions 3 --config retention.ms=2592000000
create --topic edge.status --partitions 1 --config cleanup.policy=compact
create --topic edge.models --partitions 1 --config cleanup.policy=compact --config max.message.bytes=16777216
create --topic edge.devices --partitions 6 --config cleanup.policy=compact
