-- A trivial continuous job for tests/integration/test_central_api.py: every record of
-- ${source_topic} whose Amount is not negative, copied to ${sink_topic} (exactly once).

SET 'execution.checkpointing.mode' = 'EXACTLY_ONCE';

CREATE TEMPORARY TABLE source_events (
    event_id STRING,
    device STRING,
    Amount DOUBLE
) WITH (
    'connector' = 'kafka',
    'topic' = '${source_topic}',
    'properties.bootstrap.servers' = '${bootstrap_servers}',
    'properties.group.id' = '${group_id}',
    'scan.startup.mode' = 'earliest-offset',
    'value.format' = 'json'
);

CREATE TEMPORARY TABLE sink_events (
    event_id STRING,
    device STRING,
    Amount DOUBLE
) WITH (
    'connector' = 'kafka',
    'topic' = '${sink_topic}',
    'properties.bootstrap.servers' = '${bootstrap_servers}',
    'value.format' = 'json',
    'sink.delivery-guarantee' = 'exactly-once',
    'sink.transactional-id-prefix' = '${transactional_id_prefix}',
    'properties.transaction.timeout.ms' = '${transaction_timeout_ms}'
);

INSERT INTO sink_events
SELECT event_id, device, Amount FROM source_events WHERE Amount >= 0;
