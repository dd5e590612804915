-- edgewatch central preprocessing: raw edge streams -> clean training topics.
-- Run with the ksqlDB CLI against the central cluster:  RUN SCRIPT 'deploy/ksqldb/preprocess.sql';
-- NOTE: ksqlDB and Schema Registry are not installable in edgewatch's CI machine (no registry
-- reachable there ships them), so these statements are shipped and reviewed, not run by tests.
SET 'auto.offset.reset' = 'earliest';

-- 1. Raw payments as the bridge forwards them (payload bytes unchanged, key = device id).
CREATE STREAM IF NOT EXISTS payments_raw (
    device VARCHAR KEY,
    event_id VARCHAR,
    ts DOUBLE,
    card_number VARCHAR,
    cardholder VARCHAR,
    V1 DOUBLE, V2 DOUBLE, V3 DOUBLE, V4 DOUBLE, V5 DOUBLE, V6 DOUBLE, V7 DOUBLE,
    V8 DOUBLE, V9 DOUBLE, V10 DOUBLE, V11 DOUBLE, V12 DOUBLE, V13 DOUBLE, V14 DOUBLE,
    V15 DOUBLE, V16 DOUBLE, V17 DOUBLE, V18 DOUBLE, V19 DOUBLE, V20 DOUBLE, V21 DOUBLE,
    V22 DOUBLE, V23 DOUBLE, V24 DOUBLE, V25 DOUBLE, V26 DOUBLE, V27 DOUBLE, V28 DOUBLE,
    Amount DOUBLE
) WITH (KAFKA_TOPIC = 'edge.raw.payments', VALUE_FORMAT = 'JSON');

-- 2. Device master data (compacted topic maintained centrally, key = device id).
CREATE TABLE IF NOT EXISTS devices (
    device VARCHAR PRIMARY KEY,
    site VARCHAR,
    merchant_category VARCHAR,
    country VARCHAR
) WITH (KAFKA_TOPIC = 'edge.devices', VALUE_FORMAT = 'JSON');

-- 3. Scored events, to keep the model's verdict next to each payment.
CREATE STREAM IF NOT EXISTS payments_scored (
    device VARCHAR KEY,
    event_id VARCHAR,
    score DOUBLE,
    anomaly BOOLEAN,
    model STRUCT<name VARCHAR, version INT, sha256 VARCHAR>
) WITH (KAFKA_TOPIC = 'edge.scored.payments', VALUE_FORMAT = 'JSON');

-- 4. Filter, drop and mask personal fields, augment, join device data.
--    Rows missing any model input are left out (the agent dead-letters them anyway);
--    card numbers are reduced to a salted-free last-four mask, names are dropped.
CREATE STREAM IF NOT EXISTS payments_train
    WITH (KAFKA_TOPIC = 'edge.train.payments', VALUE_FORMAT = 'JSON', PARTITIONS = 6) AS
SELECT
    p.device AS device,
    p.event_id AS event_id,
    p.ts AS ts,
    MASK_KEEP_RIGHT(p.card_number, 4) AS card_masked,
    HOUR(FROM_UNIXTIME(CAST(p.ts * 1000 AS BIGINT))) AS hour_of_day,
    LN(1 + p.Amount) AS log_amount,
    d.site AS site,
    d.merchant_category AS merchant_category,
    d.country AS country,
    p.V1, p.V2, p.V3, p.V4, p.V5, p.V6, p.V7, p.V8, p.V9, p.V10, p.V11, p.V12, p.V13, p.V14,
    p.V15, p.V16, p.V17, p.V18, p.V19, p.V20, p.V21, p.V22, p.V23, p.V24, p.V25, p.V26,
    p.V27, p.V28, p.Amount
FROM payments_raw p
LEFT JOIN devices d ON p.device = d.device
WHERE p.event_id IS NOT NULL
  AND p.Amount IS NOT NULL AND p.Amount >= 0
  AND p.V1 IS NOT NULL AND p.V14 IS NOT NULL AND p.V28 IS NOT NULL
EMIT CHANGES;

-- 5. Scores joined to their payments within 10 minutes, for drift and threshold review.
CREATE STREAM IF NOT EXISTS payments_with_scores
    WITH (KAFKA_TOPIC = 'edge.train.payments_scored', VALUE_FORMAT = 'JSON') AS
SELECT t.event_id AS event_id, t.device AS device, t.log_amount, t.hour_of_day,
       s.score, s.anomaly, s.model->version AS model_version
FROM payments_train t
JOIN payments_scored s WITHIN 10 MINUTES GRACE PERIOD 2 MINUTES
  ON t.device = s.device
WHERE t.event_id = s.event_id
EMIT CHANGES;

-- 6. Sensor readings: the 8 SKAB-like channels, finite values only.
CREATE STREAM IF NOT EXISTS sensors_raw (
    device VARCHAR KEY, event_id VARCHAR, ts DOUBLE,
    `Accelerometer1RMS` DOUBLE, `Accelerometer2RMS` DOUBLE, `Current` DOUBLE, `Pressure` DOUBLE,
    `Temperature` DOUBLE, `Thermocouple` DOUBLE, `Voltage` DOUBLE, `Volume Flow RateRMS` DOUBLE
) WITH (KAFKA_TOPIC = 'edge.raw.sensors', VALUE_FORMAT = 'JSON');

CREATE STREAM IF NOT EXISTS sensors_train
    WITH (KAFKA_TOPIC = 'edge.train.sensors', VALUE_FORMAT = 'JSON') AS
SELECT * FROM sensors_raw
WHERE `Current` IS NOT NULL AND `Pressure` IS NOT NULL AND `Temperature` IS NOT NULL
EMIT CHANGES;
