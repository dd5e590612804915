-- edgewatch central jobs in the ksqlDB dialect, for Confluent Platform users.
--
--   NOT EXECUTED HERE. ksqlDB and Schema Registry are on no registry edgewatch's machines
--   reach, so nothing in this repository runs these statements; the jobs that run (and are
--   tested against the real Kafka) are the Flink SQL files in deploy/central/. This file
--   mirrors them: the same topics and the same columns (deploy/central/topics.md), with
--   the differences ksqlDB imposes written next to each statement.
--
-- Run with the ksqlDB CLI against the central cluster:  RUN SCRIPT 'deploy/ksqldb/preprocess.sql';
-- Needs ksqlDB 0.28+ (HEADER columns, EMIT FINAL). Topic names are the defaults (edge.*,
-- train.*); edit them here for other prefixes.
--
-- Differences from the Flink jobs
--   * Deduplication by event_id is a TABLE (GROUP BY event_id, EARLIEST_BY_OFFSET), so
--     train.payments / train.sensors are changelog topics keyed by event_id: a duplicate
--     input re-emits the same row under the same key. Consumers keep the last record per
--     key (or the topic is compacted); the Flink jobs write each row once, key = device.
--   * State is kept until the table's retention; there is no TTL per key.
--   * No exactly-once sink per job; set processing.guarantee = exactly_once_v2 on the server.
--   * edge.monitoring is fed from two windowed tables (their own topics) through a stream
--     and an INSERT INTO.
--   * ksqlDB keeps key columns out of the value: their copies in the value are named
--     *_value (event_id_value, node_copy); the Flink jobs write the names of topics.md.

SET 'auto.offset.reset' = 'earliest';

-- Raw payments: payload bytes as the bridge forwards them; device = Kafka key, node and the
-- authoritative event id in headers. holder is not a column: it is never read.
CREATE STREAM IF NOT EXISTS payments_raw (
    device VARCHAR KEY,
    header_event_id BYTES HEADER('event_id'),
    event_id VARCHAR,
    ts DOUBLE,
    card_number VARCHAR,
    V1 DOUBLE, V2 DOUBLE, V3 DOUBLE, V4 DOUBLE, V5 DOUBLE, V6 DOUBLE, V7 DOUBLE,
    V8 DOUBLE, V9 DOUBLE, V10 DOUBLE, V11 DOUBLE, V12 DOUBLE, V13 DOUBLE, V14 DOUBLE,
    V15 DOUBLE, V16 DOUBLE, V17 DOUBLE, V18 DOUBLE, V19 DOUBLE, V20 DOUBLE, V21 DOUBLE,
    V22 DOUBLE, V23 DOUBLE, V24 DOUBLE, V25 DOUBLE, V26 DOUBLE, V27 DOUBLE, V28 DOUBLE,
    Amount DOUBLE
) WITH (KAFKA_TOPIC = 'edge.raw.payments', KEY_FORMAT = 'KAFKA', VALUE_FORMAT = 'JSON');

CREATE STREAM IF NOT EXISTS labels_raw (
    event_id VARCHAR,
    label INT,
    labelled_at DOUBLE,
    source VARCHAR
) WITH (KAFKA_TOPIC = 'edge.labels', VALUE_FORMAT = 'JSON');

-- First occurrence per event_id (the bridge delivers at least once), model input rows only,
-- personal fields already reduced: holder dropped, card_number to its last four digits.
CREATE TABLE IF NOT EXISTS payments_first AS
SELECT
    COALESCE(FROM_BYTES(header_event_id, 'utf8'), event_id) AS event_id,
    EARLIEST_BY_OFFSET(device) AS device,
    EARLIEST_BY_OFFSET(COALESCE(ts, CAST(ROWTIME AS DOUBLE) / 1000)) AS ts,
    EARLIEST_BY_OFFSET(CASE
        WHEN LEN(REGEXP_REPLACE(card_number, '[^0-9]', '')) >= 12
        THEN SUBSTRING(REGEXP_REPLACE(card_number, '[^0-9]', ''),
                       LEN(REGEXP_REPLACE(card_number, '[^0-9]', '')) - 3)
        ELSE CAST(NULL AS VARCHAR)
    END) AS card_last4,
    EARLIEST_BY_OFFSET(V1) AS V1, EARLIEST_BY_OFFSET(V2) AS V2, EARLIEST_BY_OFFSET(V3) AS V3,
    EARLIEST_BY_OFFSET(V4) AS V4, EARLIEST_BY_OFFSET(V5) AS V5, EARLIEST_BY_OFFSET(V6) AS V6,
    EARLIEST_BY_OFFSET(V7) AS V7, EARLIEST_BY_OFFSET(V8) AS V8, EARLIEST_BY_OFFSET(V9) AS V9,
    EARLIEST_BY_OFFSET(V10) AS V10, EARLIEST_BY_OFFSET(V11) AS V11,
    EARLIEST_BY_OFFSET(V12) AS V12, EARLIEST_BY_OFFSET(V13) AS V13,
    EARLIEST_BY_OFFSET(V14) AS V14, EARLIEST_BY_OFFSET(V15) AS V15,
    EARLIEST_BY_OFFSET(V16) AS V16, EARLIEST_BY_OFFSET(V17) AS V17,
    EARLIEST_BY_OFFSET(V18) AS V18, EARLIEST_BY_OFFSET(V19) AS V19,
    EARLIEST_BY_OFFSET(V20) AS V20, EARLIEST_BY_OFFSET(V21) AS V21,
    EARLIEST_BY_OFFSET(V22) AS V22, EARLIEST_BY_OFFSET(V23) AS V23,
    EARLIEST_BY_OFFSET(V24) AS V24, EARLIEST_BY_OFFSET(V25) AS V25,
    EARLIEST_BY_OFFSET(V26) AS V26, EARLIEST_BY_OFFSET(V27) AS V27,
    EARLIEST_BY_OFFSET(V28) AS V28,
    EARLIEST_BY_OFFSET(Amount) AS Amount
FROM payments_raw
WHERE COALESCE(FROM_BYTES(header_event_id, 'utf8'), event_id) IS NOT NULL
  AND Amount >= 0
  AND V1 IS NOT NULL AND V2 IS NOT NULL AND V3 IS NOT NULL AND V4 IS NOT NULL
  AND V5 IS NOT NULL AND V6 IS NOT NULL AND V7 IS NOT NULL AND V8 IS NOT NULL
  AND V9 IS NOT NULL AND V10 IS NOT NULL AND V11 IS NOT NULL AND V12 IS NOT NULL
  AND V13 IS NOT NULL AND V14 IS NOT NULL AND V15 IS NOT NULL AND V16 IS NOT NULL
  AND V17 IS NOT NULL AND V18 IS NOT NULL AND V19 IS NOT NULL AND V20 IS NOT NULL
  AND V21 IS NOT NULL AND V22 IS NOT NULL AND V23 IS NOT NULL AND V24 IS NOT NULL
  AND V25 IS NOT NULL AND V26 IS NOT NULL AND V27 IS NOT NULL AND V28 IS NOT NULL
GROUP BY COALESCE(FROM_BYTES(header_event_id, 'utf8'), event_id);

-- First label per event_id (0 or 1 only).
CREATE TABLE IF NOT EXISTS labels_first AS
SELECT
    event_id,
    EARLIEST_BY_OFFSET(label) AS label,
    EARLIEST_BY_OFFSET(labelled_at) AS labelled_at
FROM labels_raw
WHERE event_id IS NOT NULL AND label IN (0, 1)
GROUP BY event_id;

-- train.payments: the columns of deploy/central/topics.md, keyed by event_id here.
CREATE TABLE IF NOT EXISTS payments_train
    WITH (KAFKA_TOPIC = 'train.payments', VALUE_FORMAT = 'JSON') AS
SELECT
    p.event_id AS event_id,
    AS_VALUE(p.event_id) AS event_id_value,
    p.device AS device,
    p.ts AS ts,
    l.label AS label,
    l.labelled_at AS labelled_at,
    p.card_last4 AS card_last4,
    CAST(CAST(FLOOR(p.ts / 3600) AS BIGINT) % 24 AS INT) AS hour_of_day,
    LN(1 + p.Amount) AS log_amount,
    p.V1 AS V1, p.V2 AS V2, p.V3 AS V3, p.V4 AS V4, p.V5 AS V5, p.V6 AS V6, p.V7 AS V7,
    p.V8 AS V8, p.V9 AS V9, p.V10 AS V10, p.V11 AS V11, p.V12 AS V12, p.V13 AS V13,
    p.V14 AS V14, p.V15 AS V15, p.V16 AS V16, p.V17 AS V17, p.V18 AS V18, p.V19 AS V19,
    p.V20 AS V20, p.V21 AS V21, p.V22 AS V22, p.V23 AS V23, p.V24 AS V24, p.V25 AS V25,
    p.V26 AS V26, p.V27 AS V27, p.V28 AS V28,
    p.Amount AS Amount
FROM payments_first p
JOIN labels_first l ON p.event_id = l.event_id;

-- Sensors: dedupe only (no labels), rows with all eight channels.
CREATE STREAM IF NOT EXISTS sensors_raw (
    device VARCHAR KEY,
    header_event_id BYTES HEADER('event_id'),
    event_id VARCHAR,
    ts DOUBLE,
    `Accelerometer1RMS` DOUBLE, `Accelerometer2RMS` DOUBLE, `Current` DOUBLE,
    `Pressure` DOUBLE, `Temperature` DOUBLE, `Thermocouple` DOUBLE, `Voltage` DOUBLE,
    `Volume Flow RateRMS` DOUBLE
) WITH (KAFKA_TOPIC = 'edge.raw.sensors', KEY_FORMAT = 'KAFKA', VALUE_FORMAT = 'JSON');

CREATE TABLE IF NOT EXISTS sensors_train
    WITH (KAFKA_TOPIC = 'train.sensors', VALUE_FORMAT = 'JSON') AS
SELECT
    COALESCE(FROM_BYTES(header_event_id, 'utf8'), event_id) AS event_id,
    EARLIEST_BY_OFFSET(device) AS device,
    EARLIEST_BY_OFFSET(COALESCE(ts, CAST(ROWTIME AS DOUBLE) / 1000)) AS ts,
    EARLIEST_BY_OFFSET(`Accelerometer1RMS`) AS `Accelerometer1RMS`,
    EARLIEST_BY_OFFSET(`Accelerometer2RMS`) AS `Accelerometer2RMS`,
    EARLIEST_BY_OFFSET(`Current`) AS `Current`,
    EARLIEST_BY_OFFSET(`Pressure`) AS `Pressure`,
    EARLIEST_BY_OFFSET(`Temperature`) AS `Temperature`,
    EARLIEST_BY_OFFSET(`Thermocouple`) AS `Thermocouple`,
    EARLIEST_BY_OFFSET(`Voltage`) AS `Voltage`,
    EARLIEST_BY_OFFSET(`Volume Flow RateRMS`) AS `Volume Flow RateRMS`
FROM sensors_raw
WHERE COALESCE(FROM_BYTES(header_event_id, 'utf8'), event_id) IS NOT NULL
  AND `Accelerometer1RMS` IS NOT NULL AND `Accelerometer2RMS` IS NOT NULL
  AND `Current` IS NOT NULL AND `Pressure` IS NOT NULL AND `Temperature` IS NOT NULL
  AND `Thermocouple` IS NOT NULL AND `Voltage` IS NOT NULL
  AND `Volume Flow RateRMS` IS NOT NULL
GROUP BY COALESCE(FROM_BYTES(header_event_id, 'utf8'), event_id);

-- Monitoring: 1-minute tumbling windows on the box's clock (scored_at, rejected_at), 30 s
-- grace, one final row per window (EMIT FINAL). ksqlDB takes event time from a BIGINT
-- millisecond column, so a first stream re-keys the time.
CREATE STREAM IF NOT EXISTS scored_raw (
    device VARCHAR KEY,
    header_node BYTES HEADER('node_id'),
    `stream` VARCHAR,
    scored_at DOUBLE,
    model STRUCT<name VARCHAR, version INT, sha256 VARCHAR>,
    score DOUBLE,
    anomaly BOOLEAN,
    shadow STRUCT<model STRUCT<name VARCHAR, version INT>, score DOUBLE, anomaly BOOLEAN>
) WITH (KAFKA_TOPIC = 'edge.scored.payments', KEY_FORMAT = 'KAFKA', VALUE_FORMAT = 'JSON');
-- One more such stream per scored topic (edge.scored.sensors, ...), INSERT INTO scored_timed.

-- Each scored event once for its serving model (kind 'scored') and, when it has one, once
-- for its second model (kind 'shadow': a candidate in shadow or the model on probation).
CREATE STREAM IF NOT EXISTS scored_timed WITH (TIMESTAMP = 'event_ms') AS
SELECT 'scored' AS kind,
       COALESCE(FROM_BYTES(header_node, 'utf8'), 'unknown') AS node,
       COALESCE(`stream`, 'unknown') AS `stream`,
       model->name AS model_name, model->version AS model_version,
       score, anomaly, CAST(COALESCE(scored_at, 0) * 1000 AS BIGINT) AS event_ms
FROM scored_raw;

INSERT INTO scored_timed
SELECT 'shadow' AS kind,
       COALESCE(FROM_BYTES(header_node, 'utf8'), 'unknown') AS node,
       COALESCE(`stream`, 'unknown') AS `stream`,
       shadow->model->name AS model_name, shadow->model->version AS model_version,
       shadow->score AS score, shadow->anomaly AS anomaly,
       CAST(COALESCE(scored_at, 0) * 1000 AS BIGINT) AS event_ms
FROM scored_raw
WHERE shadow->score IS NOT NULL;

CREATE STREAM IF NOT EXISTS deadletter_raw (
    device VARCHAR KEY,
    header_node BYTES HEADER('node_id'),
    reason VARCHAR,
    source_topic VARCHAR,
    rejected_at DOUBLE
) WITH (KAFKA_TOPIC = 'edge.deadletter', KEY_FORMAT = 'KAFKA', VALUE_FORMAT = 'JSON');

CREATE STREAM IF NOT EXISTS deadletter_timed WITH (TIMESTAMP = 'event_ms') AS
SELECT COALESCE(FROM_BYTES(header_node, 'utf8'), 'unknown') AS node,
       COALESCE(SPLIT(source_topic, '/')[4], 'unknown') AS `stream`,
       COALESCE(reason, 'unknown') AS reason,
       CAST(COALESCE(rejected_at, 0) * 1000 AS BIGINT) AS event_ms
FROM deadletter_raw;

CREATE TABLE IF NOT EXISTS monitoring_scored
    WITH (KAFKA_TOPIC = 'edge.monitoring.scored', VALUE_FORMAT = 'JSON') AS
SELECT kind, node, `stream`, model_name, model_version,
       AS_VALUE(kind) AS kind_value,
       AS_VALUE(node) AS node_value, AS_VALUE(`stream`) AS stream_value,
       AS_VALUE(model_name) AS model_name_value, AS_VALUE(model_version) AS model_version_value,
       CAST(WINDOWSTART AS DOUBLE) / 1000 AS window_start,
       CAST(WINDOWEND AS DOUBLE) / 1000 AS window_end,
       COUNT(*) AS events,
       SUM(CASE WHEN anomaly THEN 1 ELSE 0 END) AS alerts,
       CAST(SUM(CASE WHEN anomaly THEN 1 ELSE 0 END) AS DOUBLE) / COUNT(*) AS alert_rate,
       AVG(score) AS score_mean,
       MAX(score) AS score_max
FROM scored_timed
WINDOW TUMBLING (SIZE 1 MINUTE, GRACE PERIOD 30 SECONDS)
GROUP BY kind, node, `stream`, model_name, model_version
EMIT FINAL;

CREATE TABLE IF NOT EXISTS monitoring_deadletter
    WITH (KAFKA_TOPIC = 'edge.monitoring.deadletter', VALUE_FORMAT = 'JSON') AS
SELECT node, `stream`, reason,
       AS_VALUE(node) AS node_value, AS_VALUE(`stream`) AS stream_value,
       AS_VALUE(reason) AS reason_value,
       CAST(WINDOWSTART AS DOUBLE) / 1000 AS window_start,
       CAST(WINDOWEND AS DOUBLE) / 1000 AS window_end,
       COUNT(*) AS events
FROM deadletter_timed
WINDOW TUMBLING (SIZE 1 MINUTE, GRACE PERIOD 30 SECONDS)
GROUP BY node, `stream`, reason
EMIT FINAL;

-- edge.monitoring: every kind in the columns of topics.md, key = node.
CREATE STREAM IF NOT EXISTS monitoring_scored_rows (
    kind_value VARCHAR, node_value VARCHAR, stream_value VARCHAR, model_name_value VARCHAR,
    model_version_value INT, window_start DOUBLE, window_end DOUBLE, events BIGINT,
    alerts BIGINT, alert_rate DOUBLE, score_mean DOUBLE, score_max DOUBLE
) WITH (KAFKA_TOPIC = 'edge.monitoring.scored', VALUE_FORMAT = 'JSON');

CREATE STREAM IF NOT EXISTS monitoring_deadletter_rows (
    node_value VARCHAR, stream_value VARCHAR, reason_value VARCHAR,
    window_start DOUBLE, window_end DOUBLE, events BIGINT
) WITH (KAFKA_TOPIC = 'edge.monitoring.deadletter', VALUE_FORMAT = 'JSON');

CREATE STREAM IF NOT EXISTS monitoring
    WITH (KAFKA_TOPIC = 'edge.monitoring', VALUE_FORMAT = 'JSON') AS
SELECT node_value AS node, kind_value AS kind, window_start, window_end,
       AS_VALUE(node_value) AS node_copy, stream_value AS `stream`,
       model_name_value AS model_name, model_version_value AS model_version,
       CAST(NULL AS VARCHAR) AS reason, events, alerts, alert_rate, score_mean, score_max
FROM monitoring_scored_rows
PARTITION BY node_value;

INSERT INTO monitoring
SELECT node_value AS node, 'deadletter' AS kind, window_start, window_end,
       AS_VALUE(node_value) AS node_copy, stream_value AS `stream`,
       CAST(NULL AS VARCHAR) AS model_name, CAST(NULL AS INT) AS model_version,
       reason_value AS reason, events, CAST(NULL AS BIGINT) AS alerts,
       CAST(NULL AS DOUBLE) AS alert_rate, CAST(NULL AS DOUBLE) AS score_mean,
       CAST(NULL AS DOUBLE) AS score_max
FROM monitoring_deadletter_rows
PARTITION BY node_value;
