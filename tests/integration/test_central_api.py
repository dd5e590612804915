"""The Python API of the central stream SQL engine against the real one: the dev stack's
Flink cluster and SQL Gateway (started once per run, on the first test that asks) reading
and writing the stack's Kafka. Topics are unique per test."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from models.central.gateway import SqlClient, SqlEngineError
from models.central.jobs import Jobs
from models.central.settings import CentralSettings
from tests.integration.harness import consume, wait_for

pytestmark = [pytest.mark.central, pytest.mark.broker]

JOBS_DIR = Path(__file__).resolve().parent / "central_jobs"


def produce(bootstrap: str, topic: str, records: list[dict[str, object]]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for record in records:
        producer.produce(topic, key=str(record["device"]), value=json.dumps(record))
    assert producer.flush(30) == 0


def payments(n: int) -> list[dict[str, object]]:
    return [{"event_id": f"e{i}", "device": f"box{i % 3}", "Amount": float(i)} for i in range(n)]


def table_ddl(name: str, topic: str, bootstrap: str, *, bounded: bool) -> str:
    bound = ", 'scan.bounded.mode' = 'latest-offset'" if bounded else ""
    return (
        f"CREATE TEMPORARY TABLE {name} (event_id STRING, device STRING, Amount DOUBLE) WITH ("
        f"'connector' = 'kafka', 'topic' = '{topic}', 'properties.bootstrap.servers' = "
        f"'{bootstrap}', 'scan.startup.mode' = 'earliest-offset', 'value.format' = 'json'{bound})"
    )


@pytest.fixture
def sql(sql_gateway: str) -> Iterator[SqlClient]:
    with SqlClient(sql_gateway) as client:
        yield client


def test_a_bad_statement_raises_with_the_engines_message(sql: SqlClient) -> None:
    with pytest.raises(SqlEngineError) as caught:
        sql.execute("SELECT * FROM no_such_table")
    message = str(caught.value)
    assert "Object 'no_such_table' not found" in message
    assert "line 1, column 15" in message  # the engine's position, not a Java stack trace
    assert "\tat " not in message
    assert len(message) < 500
    assert "ValidationException" in caught.value.trace
    with pytest.raises(SqlEngineError, match="SQL parse failed"):
        sql.execute("SELEC 1")


def test_first_rows_of_a_live_topic_with_limit(
    sql: SqlClient, kafka_bootstrap: str, kafka_topic: Callable[[str], str], central_stack: object
) -> None:
    topic = kafka_topic("raw")
    produce(kafka_bootstrap, topic, payments(30))
    sql.execute(table_ddl("live_payments", topic, kafka_bootstrap, bounded=False))
    started = time.monotonic()
    rows = list(
        sql.query("SELECT event_id, Amount FROM live_payments WHERE Amount >= 10 LIMIT 5", limit=5)
    )
    elapsed = time.monotonic() - started
    assert len(rows) == 5
    assert all(set(row) == {"event_id", "Amount"} for row in rows)
    assert all(row["Amount"] >= 10 for row in rows)
    assert {row["event_id"] for row in rows} <= {f"e{i}" for i in range(10, 30)}
    assert elapsed < 60
    # Leaving the generator closed the operation: the unbounded query's job does not linger.
    rest = central_stack.state.flink_rest  # type: ignore[attr-defined]
    wait_for(lambda: not _running_queries(rest, "live_payments"), 30, "the query job to stop")


def test_group_by_as_a_dataframe(
    sql: SqlClient, kafka_bootstrap: str, kafka_topic: Callable[[str], str]
) -> None:
    topic = kafka_topic("raw")
    produce(kafka_bootstrap, topic, payments(30))
    sql.execute(table_ddl("snapshot", topic, kafka_bootstrap, bounded=True))
    frame = sql.query_frame(
        "SELECT device, COUNT(*) AS n, SUM(Amount) AS total FROM snapshot GROUP BY device",
        timeout_s=120,
    )
    assert list(frame.columns) == ["device", "n", "total"]
    result = {row.device: (row.n, row.total) for row in frame.itertuples()}
    assert result == {
        f"box{d}": (10, float(sum(i for i in range(30) if i % 3 == d))) for d in range(3)
    }  # the final counts, not the intermediate updates of the streaming aggregate


def test_jobs_submit_list_cancel_and_resume(
    central_stack: object, kafka_bootstrap: str, kafka_topic: Callable[[str], str]
) -> None:
    source, sink = kafka_topic("jobin"), kafka_topic("jobout")
    state = central_stack.state  # type: ignore[attr-defined]
    settings = CentralSettings(
        kafka={"bootstrap_servers": kafka_bootstrap},
        central={
            "sql_gateway": state.sql_gateway,
            "flink_rest": state.flink_rest,
            "jobs_dir": JOBS_DIR,
            "jobs": ["passthrough"],
            "checkpoint_dir": central_stack.checkpoint_dir,  # type: ignore[attr-defined]
            "checkpoint_interval": "1 s",
            "group_id_prefix": source,
            "transactional_id_prefix": sink,
            "variables": {"source_topic": source, "sink_topic": sink},
        },
    )
    jobs = Jobs(settings)
    produce(kafka_bootstrap, source, [*payments(20), {"event_id": "neg", "device": "x",
                                                      "Amount": -1.0}])  # fmt: skip
    first = jobs.up()[0]
    try:
        assert first.job_id
        assert not first.already_running
        assert first.restored_from is None
        listed = jobs.status()["passthrough"]
        assert listed is not None
        assert listed.job_id == first.job_id
        assert listed.alive
        assert jobs.up()[0].already_running  # never a second copy
        out = consume(kafka_bootstrap, [sink], until=lambda r: len(r) >= 20, timeout_s=120)
        assert sorted(json.loads(r.value())["event_id"] for r in out) == sorted(
            f"e{i}" for i in range(20)
        )
        wait_for(lambda: _has_checkpoint(settings, "passthrough"), 60, "a retained checkpoint")
    finally:
        cancelled = jobs.down()
    assert cancelled == {"passthrough": [first.job_id]}
    after = jobs.status()["passthrough"]
    assert after is not None
    assert after.state == "CANCELED"
    # The next `up` continues from the retained checkpoint: its offsets are past the input.
    again = jobs.up()[0]
    try:
        assert again.restored_from is not None
        assert again.restored_from.is_relative_to(central_stack.checkpoint_dir / "passthrough")  # type: ignore[attr-defined]
        produce(kafka_bootstrap, source, [{"event_id": "late", "device": "x", "Amount": 1.0}])
        out = consume(kafka_bootstrap, [sink], until=lambda r: len(r) >= 21, timeout_s=120)
        ids = [json.loads(r.value())["event_id"] for r in out]
        assert sorted(ids) == sorted([*(f"e{i}" for i in range(20)), "late"])  # no replay
    finally:
        jobs.down()


def _has_checkpoint(settings: CentralSettings, name: str) -> bool:
    return any((settings.central.checkpoint_dir / name).glob("*/chk-*/_metadata"))


def _running_queries(flink_rest: str, table: str) -> list[str]:
    import urllib.request

    with urllib.request.urlopen(f"{flink_rest}/jobs/overview", timeout=5) as response:  # noqa: S310
        jobs = json.loads(response.read())["jobs"]
    return [j["jid"] for j in jobs if table in j["name"] and j["state"] == "RUNNING"]


def test_cli_sql_prints_rows_as_json_lines_and_engine_errors_on_stderr(
    central_stack: object,
    kafka_bootstrap: str,
    kafka_topic: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from models.central.cli import main

    state = central_stack.state  # type: ignore[attr-defined]
    monkeypatch.setenv("EDGEWATCH_CENTRAL__SQL_GATEWAY", state.sql_gateway)
    topic = kafka_topic("raw")
    produce(kafka_bootstrap, topic, payments(6))
    ddl = table_ddl("cli_snapshot", topic, kafka_bootstrap, bounded=True)
    query = "SELECT device, COUNT(*) AS n FROM cli_snapshot GROUP BY device"
    assert main(["sql", f"{ddl}; {query}", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [json.loads(line) for line in lines]
    final = {row["device"]: row["n"] for row in rows}  # the newest value per device last
    assert final == {"box0": 2, "box1": 2, "box2": 2}
    assert main(["sql", "SELECT * FROM nowhere"]) == 1
    assert "error: SQL validation failed" in capsys.readouterr().err
