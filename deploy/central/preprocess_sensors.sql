-- edgewatch central job: preprocess_sensors
--   edge.raw.sensors  ──>  train.sensors
-- Columns and JSON types of every topic: deploy/central/topics.md; this DDL follows it.
--
-- What the job guarantees
--   * Dedupe by event_id, keep-first (append-only deduplication on a processing-time
--     attribute): the bridge's redeliveries produce no second row. Sensor rows carry no
--     labels, so every first occurrence goes out, about one checkpoint interval later.
--   * State: one entry per event_id, kept ${state_ttl} after it was written
--     (table.exec.state.ttl); a duplicate arriving later than that passes again.
--   * Rows that do not parse ('json.ignore-parse-errors') or lack event_id or any of the
--     eight channels the model reads are skipped; the agent dead-letters them at the edge.
--   * Exactly once: Kafka transactions committed on each checkpoint (every
--     ${checkpoint_interval}); consumers read with isolation.level=read_committed.
--
-- Placeholders (dollar, brace, name, brace) are filled in by models/central/jobs.py.

SET 'execution.checkpointing.interval' = '${checkpoint_interval}';
SET 'execution.checkpointing.mode' = 'EXACTLY_ONCE';
SET 'execution.checkpointing.externalized-checkpoint-retention' = 'RETAIN_ON_CANCELLATION';
SET 'table.exec.state.ttl' = '${state_ttl}';

CREATE TEMPORARY TABLE raw_sensors (
    device STRING,
    headers MAP<STRING, BYTES> METADATA FROM 'headers' VIRTUAL,
    record_time TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
    event_id STRING,
    ts DOUBLE,
    `Accelerometer1RMS` DOUBLE,
    `Accelerometer2RMS` DOUBLE,
    `Current` DOUBLE,
    `Pressure` DOUBLE,
    `Temperature` DOUBLE,
    `Thermocouple` DOUBLE,
    `Voltage` DOUBLE,
    `Volume Flow RateRMS` DOUBLE,
    proc_time AS PROCTIME()
) WITH (
    'connector' = 'kafka',
    'topic' = '${raw_sensors_topic}',
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

CREATE TEMPORARY TABLE train_sensors (
    event_id STRING,
    device STRING,
    ts DOUBLE,
    `Accelerometer1RMS` DOUBLE,
    `Accelerometer2RMS` DOUBLE,
    `Current` DOUBLE,
    `Pressure` DOUBLE,
    `Temperature` DOUBLE,
    `Thermocouple` DOUBLE,
    `Voltage` DOUBLE,
    `Volume Flow RateRMS` DOUBLE
) WITH (
    'connector' = 'kafka',
    'topic' = '${train_sensors_topic}',
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

INSERT INTO train_sensors
SELECT
    event_id, device, ts,
    `Accelerometer1RMS`, `Accelerometer2RMS`, `Current`, `Pressure`,
    `Temperature`, `Thermocouple`, `Voltage`, `Volume Flow RateRMS`
FROM (
    SELECT *, ROW_NUMBER() OVER (PARTITION BY event_id ORDER BY proc_time ASC) AS rn
    FROM (
        SELECT
            -- The bridge's event_id header first (see preprocess_payments.sql).
            COALESCE(CAST(headers['event_id'] AS STRING), event_id) AS event_id,
            device,
            COALESCE(ts, EXTRACT(EPOCH FROM record_time)
                         + EXTRACT(MILLISECOND FROM record_time) / 1000.0) AS ts,
            `Accelerometer1RMS`, `Accelerometer2RMS`, `Current`, `Pressure`,
            `Temperature`, `Thermocouple`, `Voltage`, `Volume Flow RateRMS`,
            proc_time
        FROM raw_sensors
    )
    WHERE event_id IS NOT NULL
      AND `Accelerometer1RMS` IS NOT NULL AND `Accelerometer2RMS` IS NOT NULL
      AND `Current` IS NOT NULL AND `Pressure` IS NOT NULL
      AND `Temperature` IS NOT NULL AND `Thermocouple` IS NOT NULL
      AND `Voltage` IS NOT NULL AND `Volume Flow RateRMS` IS NOT NULL
)
WHERE rn = 1;
