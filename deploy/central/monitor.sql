-- edgewatch central job: monitor
--   edge.scored.{stream} + edge.deadletter  ──>  edge.monitoring
-- Columns and JSON types of every topic: deploy/central/topics.md; this DDL follows it.
--
-- What the job guarantees
--   * One row per node × stream × model (name, version) × minute of scored events:
--     events, alerts (anomaly = true), alert_rate, score_mean, score_max (kind = 'scored');
--     the same for the second model that scored them where a box runs one (a candidate in
--     shadow, or the previous model on probation: the event's `shadow`, kind = 'shadow'),
--     so its alert rate sits beside the serving model's, minute by minute and box by box;
--     and one row per node × stream × reason × minute of dead-letters (kind = 'deadletter').
--   * Event time is when the box produced the document: `scored_at` of a scored event
--     (the agent's clock; a device's own `ts` can be anything), `rejected_at` of a
--     dead-letter. Watermark = newest event time seen − ${watermark_delay_s} s per Kafka
--     partition; a partition silent for ${idle_timeout} stops holding the watermark back.
--     A minute is emitted once the watermark passes its end, exactly once, never updated:
--     events later than that (a box whose uplink was down longer than the delay) are not
--     counted in monitoring (they still reach every other consumer of the topics).
--   * Node = the bridge's `node_id` Kafka header; stream = the scored document's `stream`,
--     or the 4th part of a dead-letter's `source_topic` (edge/{device}/{kind}/{stream}).
--   * Records that do not parse are skipped ('json.ignore-parse-errors').
--   * Exactly once: Kafka transactions committed on each checkpoint (every
--     ${checkpoint_interval}); consumers read with isolation.level=read_committed.
--   * One INSERT of a UNION ALL (one sink, one transactional id prefix): two INSERTs in a
--     statement set would be two sinks and need two prefixes.
--
-- Placeholders (dollar, brace, name, brace) are filled in by models/central/jobs.py.

SET 'execution.checkpointing.interval' = '${checkpoint_interval}';
SET 'execution.checkpointing.mode' = 'EXACTLY_ONCE';
SET 'execution.checkpointing.externalized-checkpoint-retention' = 'RETAIN_ON_CANCELLATION';
SET 'table.exec.source.idle-timeout' = '${idle_timeout}';
-- Window bounds are computed and written as UTC epoch seconds.
SET 'table.local-time-zone' = 'UTC';

CREATE TEMPORARY TABLE scored (
    headers MAP<STRING, BYTES> METADATA FROM 'headers' VIRTUAL,
    event_id STRING,
    device STRING,
    `stream` STRING,
    ts DOUBLE,
    scored_at DOUBLE,
    model ROW<name STRING, version INT, sha256 STRING>,
    score DOUBLE,
    threshold DOUBLE,
    anomaly BOOLEAN,
    shadow ROW<model ROW<name STRING, version INT>, score DOUBLE, anomaly BOOLEAN>,
    -- Never NULL (a NULL rowtime fails the job): a document without scored_at counts at
    -- epoch 0, i.e. as late, and is left out.
    event_time AS TO_TIMESTAMP_LTZ(CAST(COALESCE(scored_at, 0.0) * 1000 AS BIGINT), 3),
    WATERMARK FOR event_time AS event_time - INTERVAL '${watermark_delay_s}' SECOND
) WITH (
    'connector' = 'kafka',
    'topic-pattern' = '${scored_topic_pattern}',
    'properties.bootstrap.servers' = '${bootstrap_servers}',
    ${kafka_client_options}
    'properties.group.id' = '${group_id}',
    'properties.isolation.level' = 'read_committed',
    'scan.startup.mode' = 'group-offsets',
    'properties.auto.offset.reset' = 'earliest',
    'scan.topic-partition-discovery.interval' = '60 s',
    'value.format' = 'json',
    'value.json.ignore-parse-errors' = 'true'
);

CREATE TEMPORARY TABLE deadletter (
    headers MAP<STRING, BYTES> METADATA FROM 'headers' VIRTUAL,
    event_id STRING,
    reason STRING,
    detail STRING,
    source_topic STRING,
    payload_bytes BIGINT,
    rejected_by STRING,
    rejected_at DOUBLE,
    event_time AS TO_TIMESTAMP_LTZ(CAST(COALESCE(rejected_at, 0.0) * 1000 AS BIGINT), 3),
    WATERMARK FOR event_time AS event_time - INTERVAL '${watermark_delay_s}' SECOND
) WITH (
    'connector' = 'kafka',
    'topic' = '${deadletter_topic}',
    'properties.bootstrap.servers' = '${bootstrap_servers}',
    ${kafka_client_options}
    'properties.group.id' = '${group_id}',
    'properties.isolation.level' = 'read_committed',
    'scan.startup.mode' = 'group-offsets',
    'properties.auto.offset.reset' = 'earliest',
    'value.format' = 'json',
    'value.json.ignore-parse-errors' = 'true'
);

CREATE TEMPORARY TABLE monitoring (
    kind STRING,
    window_start DOUBLE,
    window_end DOUBLE,
    node STRING,
    `stream` STRING,
    model_name STRING,
    model_version INT,
    reason STRING,
    events BIGINT,
    alerts BIGINT,
    alert_rate DOUBLE,
    score_mean DOUBLE,
    score_max DOUBLE
) WITH (
    'connector' = 'kafka',
    'topic' = '${monitoring_topic}',
    'properties.bootstrap.servers' = '${bootstrap_servers}',
    ${kafka_client_options}
    'key.format' = 'raw',
    'key.fields' = 'node',
    'value.format' = 'json',
    'value.fields-include' = 'ALL',
    'sink.delivery-guarantee' = 'exactly-once',
    'sink.transactional-id-prefix' = '${transactional_id_prefix}',
    'properties.transaction.timeout.ms' = '${transaction_timeout_ms}'
);

-- Each scored event once for its serving model and, when it has one, once for its second.
CREATE TEMPORARY VIEW model_rows AS
SELECT
    'scored' AS kind,
    COALESCE(CAST(headers['node_id'] AS STRING), 'unknown') AS node,
    COALESCE(`stream`, 'unknown') AS `stream`,
    model.name AS model_name,
    model.version AS model_version,
    anomaly,
    score,
    event_time
FROM scored
UNION ALL
SELECT
    'shadow' AS kind,
    COALESCE(CAST(headers['node_id'] AS STRING), 'unknown') AS node,
    COALESCE(`stream`, 'unknown') AS `stream`,
    shadow.model.name AS model_name,
    shadow.model.version AS model_version,
    shadow.anomaly AS anomaly,
    shadow.score AS score,
    event_time
FROM scored
WHERE shadow.score IS NOT NULL;

CREATE TEMPORARY VIEW deadletter_rows AS
SELECT
    COALESCE(CAST(headers['node_id'] AS STRING), 'unknown') AS node,
    COALESCE(SPLIT_INDEX(source_topic, '/', 3), 'unknown') AS `stream`,
    COALESCE(reason, 'unknown') AS reason,
    event_time
FROM deadletter;

INSERT INTO monitoring
SELECT
    kind,
    CAST(EXTRACT(EPOCH FROM window_start) AS DOUBLE) AS window_start,
    CAST(EXTRACT(EPOCH FROM window_end) AS DOUBLE) AS window_end,
    node,
    `stream`,
    model_name,
    model_version,
    CAST(NULL AS STRING) AS reason,
    COUNT(*) AS events,
    COUNT(*) FILTER (WHERE anomaly) AS alerts,
    CAST(COUNT(*) FILTER (WHERE anomaly) AS DOUBLE) / COUNT(*) AS alert_rate,
    AVG(score) AS score_mean,
    MAX(score) AS score_max
FROM TABLE(TUMBLE(TABLE model_rows, DESCRIPTOR(event_time), INTERVAL '1' MINUTE))
GROUP BY window_start, window_end, kind, node, `stream`, model_name, model_version
UNION ALL
SELECT
    'deadletter' AS kind,
    CAST(EXTRACT(EPOCH FROM window_start) AS DOUBLE) AS window_start,
    CAST(EXTRACT(EPOCH FROM window_end) AS DOUBLE) AS window_end,
    node,
    `stream`,
    CAST(NULL AS STRING) AS model_name,
    CAST(NULL AS INT) AS model_version,
    reason,
    COUNT(*) AS events,
    CAST(NULL AS BIGINT) AS alerts,
    CAST(NULL AS DOUBLE) AS alert_rate,
    CAST(NULL AS DOUBLE) AS score_mean,
    CAST(NULL AS DOUBLE) AS score_max
FROM TABLE(TUMBLE(TABLE deadletter_rows, DESCRIPTOR(event_time), INTERVAL '1' MINUTE))
GROUP BY window_start, window_end, node, `stream`, reason;
