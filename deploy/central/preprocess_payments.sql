-- edgewatch central job: preprocess_payments
--   edge.raw.payments ⋈ edge.labels on event_id  ──>  train.payments
-- Columns and JSON types of every topic: deploy/central/topics.md (the one place they are
-- written down); this DDL follows it.
--
-- What the job guarantees
--   * Dedupe: each input is deduplicated by event_id, keep-first (ROW_NUMBER ... ORDER BY a
--     processing-time attribute, rn = 1), which Flink runs as an append-only deduplication:
--     the bridge's redeliveries and a relabelled event produce no second row.
--   * Only labelled events leave: an inner join of the two deduplicated, append-only streams,
--     so the output is append-only too and fits a plain Kafka topic.
--   * Late labels: a label arrives minutes to days after its event. Join and dedupe state is
--     kept for ${state_ttl} (table.exec.state.ttl) after it was written; a label later
--     than that finds no event and is dropped, a duplicate later than that passes again.
--     State grows with the event rate × TTL: ~0.45 KB per event in a checkpoint (measured:
--     13 MB for 30,000 payments with their labels).
--   * Personal fields: `holder` is not a column of the source table (the JSON format skips
--     it while parsing, so it never exists inside the job); `card_number` leaves only as
--     `card_last4` (the last four of its digits, and only for numbers of at least 12
--     digits, otherwise NULL).
--   * Malformed records: JSON that does not parse is skipped ('json.ignore-parse-errors'),
--     and so is a record without event_id, Amount or any V1..V28. The agent dead-letters the
--     same payload at the edge (reason on edge.deadletter, counted by the monitor job).
--   * Exactly once: checkpoints every ${checkpoint_interval}; the sink writes in Kafka
--     transactions committed on each checkpoint, so downstream consumers must read with
--     isolation.level=read_committed and see each row once, ~one checkpoint interval late.
--
-- Placeholders (dollar, brace, name, brace) are filled in by models/central/jobs.py.

SET 'execution.checkpointing.interval' = '${checkpoint_interval}';
SET 'execution.checkpointing.mode' = 'EXACTLY_ONCE';
SET 'execution.checkpointing.externalized-checkpoint-retention' = 'RETAIN_ON_CANCELLATION';
SET 'table.exec.state.ttl' = '${state_ttl}';

CREATE TEMPORARY TABLE raw_payments (
    device STRING,
    headers MAP<STRING, BYTES> METADATA FROM 'headers' VIRTUAL,
    record_time TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
    event_id STRING,
    ts DOUBLE,
    card_number STRING,
    V1 DOUBLE, V2 DOUBLE, V3 DOUBLE, V4 DOUBLE, V5 DOUBLE, V6 DOUBLE, V7 DOUBLE,
    V8 DOUBLE, V9 DOUBLE, V10 DOUBLE, V11 DOUBLE, V12 DOUBLE, V13 DOUBLE, V14 DOUBLE,
    V15 DOUBLE, V16 DOUBLE, V17 DOUBLE, V18 DOUBLE, V19 DOUBLE, V20 DOUBLE, V21 DOUBLE,
    V22 DOUBLE, V23 DOUBLE, V24 DOUBLE, V25 DOUBLE, V26 DOUBLE, V27 DOUBLE, V28 DOUBLE,
    Amount DOUBLE,
    proc_time AS PROCTIME()
) WITH (
    'connector' = 'kafka',
    'topic' = '${raw_payments_topic}',
    'properties.bootstrap.servers' = '${bootstrap_servers}',
    ${kafka_client_options}
    'properties.group.id' = '${group_id}',
    'properties.isolation.level' = 'read_committed',
    'scan.startup.mode' = 'group-offsets',
    'properties.auto.offset.reset' = 'earliest',
    'key.format' = 'raw',
    'key.fields' = 'device',
    'value.format' = 'json',
    'value.fields-include' = 'EXCEPT_KEY',
    'value.json.ignore-parse-errors' = 'true'
);

CREATE TEMPORARY TABLE labels (
    event_id STRING,
    label INT,
    labelled_at DOUBLE,
    source STRING,
    proc_time AS PROCTIME()
) WITH (
    'connector' = 'kafka',
    'topic' = '${labels_topic}',
    'properties.bootstrap.servers' = '${bootstrap_servers}',
    ${kafka_client_options}
    'properties.group.id' = '${group_id}',
    'properties.isolation.level' = 'read_committed',
    'scan.startup.mode' = 'group-offsets',
    'properties.auto.offset.reset' = 'earliest',
    'value.format' = 'json',
    'value.json.ignore-parse-errors' = 'true'
);

CREATE TEMPORARY TABLE train_payments (
    event_id STRING,
    device STRING,
    ts DOUBLE,
    label INT,
    labelled_at DOUBLE,
    card_last4 STRING,
    hour_of_day INT,
    log_amount DOUBLE,
    V1 DOUBLE, V2 DOUBLE, V3 DOUBLE, V4 DOUBLE, V5 DOUBLE, V6 DOUBLE, V7 DOUBLE,
    V8 DOUBLE, V9 DOUBLE, V10 DOUBLE, V11 DOUBLE, V12 DOUBLE, V13 DOUBLE, V14 DOUBLE,
    V15 DOUBLE, V16 DOUBLE, V17 DOUBLE, V18 DOUBLE, V19 DOUBLE, V20 DOUBLE, V21 DOUBLE,
    V22 DOUBLE, V23 DOUBLE, V24 DOUBLE, V25 DOUBLE, V26 DOUBLE, V27 DOUBLE, V28 DOUBLE,
    Amount DOUBLE
) WITH (
    'connector' = 'kafka',
    'topic' = '${train_payments_topic}',
    'properties.bootstrap.servers' = '${bootstrap_servers}',
    ${kafka_client_options}
    'key.format' = 'raw',
    'key.fields' = 'device',
    'value.format' = 'json',
    'value.fields-include' = 'ALL',
    'sink.delivery-guarantee' = 'exactly-once',
    'sink.transactional-id-prefix' = '${transactional_id_prefix}',
    'properties.transaction.timeout.ms' = '${transaction_timeout_ms}'
);

INSERT INTO train_payments
WITH events AS (
    SELECT
        -- The bridge's event_id header is authoritative (the payload's own id when it is a
        -- valid one, else the content hash); the payload's id covers records produced
        -- without the bridge.
        COALESCE(CAST(headers['event_id'] AS STRING), event_id) AS event_id,
        device,
        -- Source time when the device gave one, else when the bridge produced the record.
        COALESCE(ts, EXTRACT(EPOCH FROM record_time) + EXTRACT(MILLISECOND FROM record_time) / 1000.0)
            AS ts,
        card_number,
        V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12, V13, V14,
        V15, V16, V17, V18, V19, V20, V21, V22, V23, V24, V25, V26, V27, V28,
        Amount,
        proc_time
    FROM raw_payments
),
first_events AS (
    SELECT * FROM (
        SELECT *, ROW_NUMBER() OVER (PARTITION BY event_id ORDER BY proc_time ASC) AS rn
        FROM events
        WHERE event_id IS NOT NULL AND Amount >= 0
          AND V1 IS NOT NULL AND V2 IS NOT NULL AND V3 IS NOT NULL AND V4 IS NOT NULL
          AND V5 IS NOT NULL AND V6 IS NOT NULL AND V7 IS NOT NULL AND V8 IS NOT NULL
          AND V9 IS NOT NULL AND V10 IS NOT NULL AND V11 IS NOT NULL AND V12 IS NOT NULL
          AND V13 IS NOT NULL AND V14 IS NOT NULL AND V15 IS NOT NULL AND V16 IS NOT NULL
          AND V17 IS NOT NULL AND V18 IS NOT NULL AND V19 IS NOT NULL AND V20 IS NOT NULL
          AND V21 IS NOT NULL AND V22 IS NOT NULL AND V23 IS NOT NULL AND V24 IS NOT NULL
          AND V25 IS NOT NULL AND V26 IS NOT NULL AND V27 IS NOT NULL AND V28 IS NOT NULL
    )
    WHERE rn = 1
),
first_labels AS (
    SELECT * FROM (
        SELECT *, ROW_NUMBER() OVER (PARTITION BY event_id ORDER BY proc_time ASC) AS rn
        FROM labels
        WHERE event_id IS NOT NULL AND label IN (0, 1)
    )
    WHERE rn = 1
)
SELECT
    e.event_id,
    e.device,
    e.ts,
    l.label,
    l.labelled_at,
    CASE
        WHEN CHAR_LENGTH(REGEXP_REPLACE(e.card_number, '[^0-9]', '')) >= 12
        THEN RIGHT(REGEXP_REPLACE(e.card_number, '[^0-9]', ''), 4)
    END AS card_last4,
    CAST(MOD(CAST(FLOOR(e.ts / 3600) AS BIGINT), 24) AS INT) AS hour_of_day,
    LN(1 + e.Amount) AS log_amount,
    e.V1, e.V2, e.V3, e.V4, e.V5, e.V6, e.V7, e.V8, e.V9, e.V10, e.V11, e.V12, e.V13, e.V14,
    e.V15, e.V16, e.V17, e.V18, e.V19, e.V20, e.V21, e.V22, e.V23, e.V24, e.V25, e.V26,
    e.V27, e.V28,
    e.Amount
FROM first_events AS e
JOIN first_labels AS l ON e.event_id = l.event_id;
