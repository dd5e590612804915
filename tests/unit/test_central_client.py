"""The SQL Gateway client's pure core and the job files' handling, on payloads the real
Flink 2.3.0 gateway sent (trimmed); the live engine is exercised in
tests/integration/test_central_api.py."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from models.central.gateway import (
    Change,
    Request,
    SqlClient,
    SqlEngineError,
    apply_changelog,
    decode_page,
    error_from_response,
    first_page,
    root_cause,
    row_view,
    submit_statement,
)
from models.central.jobs import (
    JobFileError,
    decode_overview,
    failure_message,
    fill_placeholders,
    latest_checkpoint,
    parse_job,
    split_statements,
)
from models.central.settings import REPO_JOBS, CentralSettings

# The text of errors[1] of an HTTP 500 answer to "SELECT * FROM nosuch" (one "at" line kept
# per exception; the real text is 10.7 kB).
VALIDATION_TRACE = """<Exception on server side:
org.apache.flink.table.gateway.api.utils.SqlGatewayException: org.apache.flink.table.gateway.api.utils.SqlGatewayException: Failed to fetchResults.
\tat org.apache.flink.table.gateway.rest.handler.statement.FetchResultsHandler.handleRequest(FetchResultsHandler.java:91)
Caused by: org.apache.flink.table.gateway.api.utils.SqlGatewayException: Failed to fetchResults.
\tat org.apache.flink.table.gateway.service.SqlGatewayServiceImpl.fetchResults(SqlGatewayServiceImpl.java:238)
\t... 40 more
Caused by: org.apache.flink.table.gateway.service.utils.SqlExecutionException: Failed to execute the operation 02f03695-7dd7-4025-be3d-3e1d871e8ce4.
\tat org.apache.flink.table.gateway.service.operation.OperationManager$Operation.processThrowable(OperationManager.java:415)
\t... 1 more
Caused by: org.apache.flink.table.api.ValidationException: SQL validation failed. From line 1, column 15 to line 1, column 20: Object 'nosuch' not found
\tat org.apache.flink.table.planner.calcite.FlinkPlannerImpl.org$apache$flink$table$planner$calcite$FlinkPlannerImpl$$validate(FlinkPlannerImpl.scala:205)
\t... 7 more
Caused by: org.apache.calcite.runtime.CalciteContextException: From line 1, column 15 to line 1, column 20: Object 'nosuch' not found
\tat java.base/jdk.internal.reflect.NativeConstructorAccessorImpl.newInstance0(Native Method)
\t... 15 more
Caused by: org.apache.calcite.sql.validate.SqlValidatorException: Object 'nosuch' not found
\tat java.base/jdk.internal.reflect.NativeConstructorAccessorImpl.newInstance0(Native Method)
\t... 34 more

End of exception on server side>"""  # noqa: E501

PARSE_TRACE = """org.apache.flink.table.gateway.service.utils.SqlExecutionException: Failed to execute the operation 359358a8.
\tat org.apache.flink.table.gateway.service.operation.OperationManager$Operation.processThrowable(OperationManager.java:415)
Caused by: org.apache.flink.table.api.SqlParserException: SQL parse failed. Encountered "raw" at line 1, column 14.
Was expecting one of:
    <BRACKET_QUOTED_IDENTIFIER> ...
    <QUOTED_IDENTIFIER> ...
\tat org.apache.flink.table.planner.parse.CalciteParser.parseSqlList(CalciteParser.java:81)
Caused by: org.apache.calcite.sql.parser.SqlParseException: Encountered "raw" at line 1, column 14.
Was expecting one of:
    <BRACKET_QUOTED_IDENTIFIER> ...
    <QUOTED_IDENTIFIER> ...
\tat org.apache.flink.sql.parser.impl.FlinkSqlParserImpl.convertException(FlinkSqlParserImpl.java:580)
"""  # noqa: E501

COLUMNS = [
    {"name": "device", "logicalType": {"type": "VARCHAR", "nullable": True, "length": 2147483647}},
    {"name": "n", "logicalType": {"type": "BIGINT", "nullable": False}},
]


def page(data: list[dict[str, Any]], *, result_type: str = "PAYLOAD", token: int = 1) -> dict:
    body: dict[str, Any] = {
        "resultType": result_type,
        "isQueryResult": True,
        "jobID": "d5d76957e269b361eb8f44d57dc21331",
        "resultKind": "SUCCESS_WITH_CONTENT",
        "results": {"columns": COLUMNS, "rowFormat": "JSON", "data": data},
    }
    if result_type != "EOS":
        body["nextResultUri"] = f"/v3/sessions/s/operations/o/result/{token}?rowFormat=JSON"
    return body


def test_error_message_is_the_engines_root_cause_with_its_position() -> None:
    body = json.dumps({"errors": ["Internal server error.", VALIDATION_TRACE]}).encode()
    error = error_from_response(500, body)
    assert str(error) == (
        "SQL validation failed. From line 1, column 15 to line 1, column 20: "
        "Object 'nosuch' not found"
    )
    assert error.status == 500
    assert "FlinkPlannerImpl" in error.trace  # the whole trace stays available
    assert "\tat " not in str(error)


def test_multi_line_engine_messages_are_kept_without_the_stack() -> None:
    message = root_cause(PARSE_TRACE)
    assert message.startswith('SQL parse failed. Encountered "raw" at line 1, column 14.')
    assert "Was expecting one of:" in message
    assert "CalciteParser" not in message


def test_non_json_or_empty_errors_still_raise_readable_errors() -> None:
    assert str(error_from_response(404, b"Not Found")) == "Not Found"
    assert str(error_from_response(503, b'{"errors": []}')) == "HTTP 503"
    assert root_cause("") == "unknown engine error"


def test_pages_decode_into_typed_columns_and_row_dicts() -> None:
    decoded = decode_page(page([{"kind": "INSERT", "fields": ["d0", 14]}]))
    assert [c.name for c in decoded.columns] == ["device", "n"]
    assert decoded.columns[1].type == "BIGINT"
    assert not decoded.columns[1].nullable
    assert decoded.changes == (Change("INSERT", {"device": "d0", "n": 14}),)
    assert decoded.job_id == "d5d76957e269b361eb8f44d57dc21331"
    assert decoded.next_uri is not None
    assert not decoded.done
    assert decode_page(page([], result_type="EOS")).done
    assert decode_page({"resultType": "NOT_READY", "nextResultUri": "/x"}).changes == ()


def test_changelog_of_a_streaming_group_by_ends_in_its_final_rows() -> None:
    """What the gateway sent for SELECT COUNT(*) over five rows, per device."""
    changes = [
        Change("INSERT", {"device": "d0", "n": 1}),
        Change("INSERT", {"device": "d1", "n": 1}),
        Change("UPDATE_BEFORE", {"device": "d0", "n": 1}),
        Change("UPDATE_AFTER", {"device": "d0", "n": 2}),
        Change("UPDATE_BEFORE", {"device": "d1", "n": 1}),
        Change("UPDATE_AFTER", {"device": "d1", "n": 2}),
        Change("UPDATE_BEFORE", {"device": "d0", "n": 2}),
        Change("UPDATE_AFTER", {"device": "d0", "n": 3}),
        Change("DELETE", {"device": "d9", "n": 7}),  # retracting a row never seen: ignored
    ]
    assert apply_changelog(changes) == [{"device": "d1", "n": 2}, {"device": "d0", "n": 3}]
    # query() without changelog=True: additions only, the newest version of each row last
    shown = [row_view(change, changelog=False) for change in changes]
    assert [row for row in shown if row is not None] == [
        {"device": "d0", "n": 1}, {"device": "d1", "n": 1}, {"device": "d0", "n": 2},
        {"device": "d1", "n": 2}, {"device": "d0", "n": 3},
    ]  # fmt: skip
    assert row_view(changes[2], changelog=True) == {
        "device": "d0",
        "n": 1,
        "_kind": "UPDATE_BEFORE",
    }


def test_duplicate_rows_are_retracted_one_at_a_time() -> None:
    row = {"device": "d0", "n": 1}
    changes = [Change("INSERT", row), Change("INSERT", dict(row)), Change("DELETE", dict(row))]
    assert apply_changelog(changes) == [row]


def test_requests_carry_statement_and_per_statement_config() -> None:
    request = submit_statement("s1", "INSERT INTO t SELECT 1", {"pipeline.name": "job"})
    assert request.method == "POST"
    assert request.path.endswith("/sessions/s1/statements")
    assert json.loads(request.encoded_body() or b"") == {
        "statement": "INSERT INTO t SELECT 1",
        "executionConfig": {"pipeline.name": "job"},
    }
    assert "executionConfig" not in (submit_statement("s1", "SELECT 1").body or {})
    assert first_page("s1", "o1").path.endswith("/operations/o1/result/0?rowFormat=JSON")


def test_statements_split_outside_strings_and_comments() -> None:
    text = """
    -- a comment; with a semicolon and a quote: don't
    SET 'a.b' = 'x;y';
    /* block; comment */ CREATE TABLE `we;ird` (s STRING COMMENT 'it''s; fine');
    SELECT ';' AS semi -- trailing; comment
    ;
    EXECUTE STATEMENT SET BEGIN INSERT INTO a SELECT 1; INSERT INTO b SELECT 2; END;
    """
    assert split_statements(text) == [
        "SET 'a.b' = 'x;y'",
        "CREATE TABLE `we;ird` (s STRING COMMENT 'it''s; fine')",
        "SELECT ';' AS semi",
        "EXECUTE STATEMENT SET BEGIN INSERT INTO a SELECT 1; INSERT INTO b SELECT 2; END",
    ]


def test_placeholders_are_filled_and_a_missing_one_is_named() -> None:
    assert fill_placeholders("'${topic}'", {"topic": "edge.raw.x"}, source="f") == "'edge.raw.x'"
    with pytest.raises(JobFileError, match=r"job\.sql: no value for placeholder \$\{topic\}"):
        fill_placeholders("'${topic}'", {}, source="job.sql")
    with pytest.raises(JobFileError, match="bad placeholder"):
        fill_placeholders("costs $ 5", {}, source="job.sql")


def test_a_job_file_must_end_with_its_one_insert() -> None:
    ok = parse_job("j", Path("j.sql"), "SET 'x' = '${v}'; CREATE TABLE t (a INT); INSERT INTO t "
                   "SELECT 1;", {"v": "1"})  # fmt: skip
    assert ok.setup == ("SET 'x' = '1'", "CREATE TABLE t (a INT)")
    assert ok.insert == "INSERT INTO t SELECT 1"
    for bad in ["CREATE TABLE t (a INT)", "INSERT INTO t SELECT 1; INSERT INTO t SELECT 2",
                "INSERT INTO t SELECT 1; SET 'a' = 'b'"]:  # fmt: skip
        with pytest.raises(JobFileError, match="exactly one INSERT"):
            parse_job("j", Path("j.sql"), bad, {})


def test_the_shipped_job_files_parse_with_the_default_settings() -> None:
    settings = CentralSettings()
    for name in settings.central.jobs:
        path = REPO_JOBS / f"{name}.sql"
        if not path.exists():
            pytest.skip(f"{path} not written yet")
        job = parse_job(name, path, path.read_text(), settings.job_variables(name))
        assert job.insert.upper().startswith("INSERT INTO")
        assert not any("${" in statement for statement in job.statements)


def test_job_variables_derive_topics_groups_and_transactional_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EDGEWATCH_KAFKA__BOOTSTRAP_SERVERS", "k1:9092")
    monkeypatch.setenv("EDGEWATCH_CENTRAL__TOPIC_PREFIX", "site1")
    monkeypatch.setenv("EDGEWATCH_CENTRAL__VARIABLES", '{"monitoring_topic": "mon"}')
    variables = CentralSettings().job_variables("monitor")
    assert variables["bootstrap_servers"] == "k1:9092"
    assert variables["raw_payments_topic"] == "site1.raw.payments"
    assert variables["scored_topic_pattern"] == r"site1\.scored\..+"
    assert variables["group_id"] == "edgewatch-central-monitor"
    assert variables["transactional_id_prefix"] == "edgewatch-central-monitor"
    assert variables["monitoring_topic"] == "mon"  # [central.variables] wins


def _kafka_tables(settings: CentralSettings, name: str) -> list[str]:
    path = REPO_JOBS / f"{name}.sql"
    job = parse_job(name, path, path.read_text(), settings.job_variables(name))
    return [s for s in job.statements if "'connector' = 'kafka'" in s]


def test_kafka_tables_carry_the_clusters_security_settings() -> None:
    plain = CentralSettings()
    assert plain.job_variables("monitor")["kafka_client_options"] == ""
    assert not any("security" in t for t in _kafka_tables(plain, "monitor"))

    password = 'it\'s \\a "secret"'
    secured = CentralSettings(kafka={
        "bootstrap_servers": "k1:9093", "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "central",
        "sasl_password": password, "ssl_ca_location": "/etc/edgewatch/kafka-ca.pem",
    })  # fmt: skip
    for name in secured.central.jobs:
        tables = _kafka_tables(secured, name)
        assert tables
        for table in tables:
            assert "'properties.security.protocol' = 'SASL_SSL'," in table
            assert "'properties.sasl.mechanism' = 'SCRAM-SHA-512'," in table
            assert "'properties.ssl.truststore.type' = 'PEM'," in table
            assert "'properties.ssl.truststore.location' = '/etc/edgewatch/kafka-ca.pem'," in table
            (jaas,) = [line for line in table.splitlines() if "sasl.jaas.config" in line]
            # SQL doubles single quotes, JAAS escapes backslashes and double quotes.
            value = jaas.split(" = '", 1)[1].removesuffix("',").replace("''", "'")
            assert value.startswith("org.apache.flink.kafka.shaded.org.apache.kafka.common."
                                    "security.scram.ScramLoginModule "
                                    'required username="central" password="')  # fmt: skip
            quoted = value.split('password="', 1)[1].removesuffix('";')
            assert quoted.replace('\\"', '"').replace("\\\\", "\\") == password


def test_client_certificates_are_refused_for_the_central_jobs() -> None:
    from pydantic import ValidationError

    mtls = {"security_protocol": "SSL", "ssl_ca_location": "/ca.pem",
            "ssl_certificate_location": "/c.pem", "ssl_key_location": "/k.pem"}  # fmt: skip
    with pytest.raises(ValidationError, match="client certificates"):
        CentralSettings(kafka=mtls)
    own = "'properties.security.protocol' = 'SSL',"
    settings = CentralSettings(kafka=mtls, central={"variables": {"kafka_client_options": own}})
    assert settings.job_variables("monitor")["kafka_client_options"] == own


def test_bad_durations_and_job_names_are_refused() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="Flink duration"):
        CentralSettings(central={"checkpoint_interval": "often"})
    with pytest.raises(ValidationError, match="job file stems"):
        CentralSettings(central={"jobs": ["../etc/passwd"]})


def test_resume_picks_the_newest_complete_checkpoint(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path, "job") is None
    old = tmp_path / "job" / "aaaa" / "chk-9"
    new = tmp_path / "job" / "bbbb" / "chk-3"
    incomplete = tmp_path / "job" / "bbbb" / "chk-4"  # being written: no _metadata yet
    for directory in (old, new, incomplete):
        directory.mkdir(parents=True)
    (old / "_metadata").write_bytes(b"x")
    (new / "_metadata").write_bytes(b"x")
    now = time.time()
    os.utime(old / "_metadata", (now - 60, now - 60))
    assert latest_checkpoint(tmp_path, "job") == new  # the newer run, not the higher number
    assert latest_checkpoint(tmp_path, "other") is None


def test_overview_lists_jobs_newest_first_with_liveness() -> None:
    body = {
        "jobs": [
            {"jid": "a1", "name": "passthrough", "state": "CANCELED", "start-time": 1000,
             "duration": 5},
            {"jid": "b2", "name": "passthrough", "state": "RUNNING", "start-time": 2000,
             "duration": 7},
        ]
    }  # fmt: skip
    jobs = decode_overview(body)
    assert [job.job_id for job in jobs] == ["b2", "a1"]
    assert [job.alive for job in jobs] == [True, False]


def test_the_example_central_toml_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    from models.central.cli import main

    example = REPO_JOBS.parents[0] / "config" / "central.toml"
    assert main(["validate-config", str(example)]) == 0, capsys.readouterr().out


class ScriptedGateway(SqlClient):
    """The client's I/O shell fed by a script of answers (the HTTP layer only)."""

    def __init__(self, answers: list[dict[str, Any] | SqlEngineError]) -> None:
        super().__init__("http://gateway.invalid", poll_interval_s=0.001)
        self.answers = answers
        self.sent: list[Request] = []

    def _send(self, request: Request) -> dict[str, Any]:
        self.sent.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, SqlEngineError):
            raise answer
        return answer


def test_a_session_the_gateway_lost_is_replaced_once() -> None:
    gone = SqlEngineError("Session 'old' does not exist.", status=500)
    client = ScriptedGateway([
        gone,
        {"sessionHandle": "new"},
        {"operationHandle": "op"},
        {"resultType": "NOT_READY", "nextResultUri": "/v3/sessions/new/operations/op/result/0"},
        page([{"kind": "INSERT", "fields": ["d0", 1]}]),
        page([], result_type="EOS"),
    ])  # fmt: skip
    client._session = "old"
    assert list(client.query("SELECT device, n FROM t")) == [{"device": "d0", "n": 1}]
    paths = [request.path for request in client.sent]
    assert paths[:3] == [
        "/v3/sessions/old/statements", "/v3/sessions", "/v3/sessions/new/statements"
    ]  # fmt: skip
    other = ScriptedGateway([SqlEngineError("Table 'x' not found", status=500)])
    other._session = "s"
    with pytest.raises(SqlEngineError, match="Table 'x' not found"):
        other.execute("SELECT * FROM x")


def test_leaving_a_query_early_closes_its_operation() -> None:
    client = ScriptedGateway([
        {"sessionHandle": "s"},
        {"operationHandle": "op"},
        page([{"kind": "INSERT", "fields": ["d0", 1]}, {"kind": "INSERT", "fields": ["d1", 1]}]),
        {},  # the answer to the close
    ])  # fmt: skip
    assert list(client.query("SELECT device, n FROM t", limit=1)) == [{"device": "d0", "n": 1}]
    assert client.sent[-1].method == "DELETE"
    assert client.sent[-1].path.endswith("/operations/op/close")


def test_a_failing_jobs_last_failure_says_what_and_why() -> None:
    """Flink REST /jobs/{id}/exceptions of preprocess_payments started before its topics
    existed (trimmed)."""
    trace = "\n".join([
        "org.apache.flink.util.FlinkException: Global failure triggered by OperatorCoordinator"
        " for 'Source: KafkaSource-default_catalog.default_database.labels -> Calc[8]'.",
        "\tat org.apache.flink.runtime.operators.coordination.RecreateOnResetOperatorCoordinator"
        "$QuiesceableContext.failJob(RecreateOnResetOperatorCoordinator.java:259)",
        "Caused by: org.apache.flink.util.FlinkRuntimeException: Failed to list subscribed "
        "topic partitions due to ",
        "\t... 7 more",
        "Caused by: java.lang.RuntimeException: Failed to get metadata for topics [edge.labels].",
        "\t... 3 more",
        "Caused by: java.util.concurrent.ExecutionException: org.apache.flink.kafka.shaded.org."
        "apache.kafka.common.errors.UnknownTopicOrPartitionException: This server does not "
        "host this topic-partition.",
        "\t... 9 more",
        "Caused by: org.apache.flink.kafka.shaded.org.apache.kafka.common.errors."
        "UnknownTopicOrPartitionException: This server does not host this topic-partition.",
    ])  # fmt: skip
    body = {"exceptionHistory": {"entries": [{"exceptionName": "x", "stacktrace": trace}]}}
    assert failure_message(body) == (
        "Failed to get metadata for topics [edge.labels]. Caused by: "
        "UnknownTopicOrPartitionException: This server does not host this topic-partition."
    )
    assert failure_message({"exceptionHistory": {"entries": []}}) is None
