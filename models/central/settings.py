"""Settings of ``edgewatch-central``: the ``[central]`` and ``[kafka]`` sections of
``central.toml`` (then ``EDGEWATCH_*`` variables, then a credentials directory, as for every
edgewatch service; ``EDGEWATCH_CENTRAL__SQL_GATEWAY=http://…`` points at another gateway).

The job files in ``deploy/central/*.sql`` hold ``${name}`` placeholders (the table in
``deploy/central/README.md``); :meth:`CentralSettings.job_variables` is the one place their
values come from: the derived ones (Kafka bootstrap, topics from the prefixes, per-job
consumer group and transactional id), then ``[central.variables]``, which may override any
of them or add new ones.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import Field, field_validator, model_validator

from plumbing.settings import KafkaSettings, ServiceSettings, StrictModel

REPO_JOBS = Path(__file__).resolve().parents[2] / "deploy" / "central"
JOB_NAME = r"^[A-Za-z0-9_-]{1,64}$"
_DURATION = re.compile(r"^\d+(\.\d+)?\s*(ms|s|min|h|d)$")
_TOPIC_PART = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"


def _duration(value: str) -> str:
    if not _DURATION.match(value.strip()):
        raise ValueError(f"{value!r} is not a Flink duration like '10 s', '500 ms' or '7 d'")
    return value.strip()


class CentralEngineSettings(StrictModel):
    """The ``[central]`` section: where the engine is, which jobs run and how."""

    sql_gateway: str = Field(
        "http://127.0.0.1:8083",
        pattern=r"^https?://[^\s/]+(/.*)?$",
        description="Base URL of the Flink SQL Gateway's REST endpoint (the dev stack prints "
        "it as central.sql_gateway of `deploy/dev/stack.py up --central`).",
    )
    flink_rest: str = Field(
        "http://127.0.0.1:8081",
        pattern=r"^https?://[^\s/]+(/.*)?$",
        description="Base URL of the Flink JobManager's REST API (job list and cancel).",
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="Longest wait for one HTTP answer from the gateway or Flink."
    )
    jobs_dir: Path = Field(
        REPO_JOBS, description="Directory of the job files, one continuous job per NAME.sql."
    )
    jobs: list[str] = Field(
        ["preprocess_payments", "preprocess_sensors", "monitor"],
        description="Job files (stems in jobs_dir) that `jobs up` submits; the stem is also "
        "the Flink job name, which is how `jobs status` and `jobs down` find them.",
    )
    include: list[str] = Field(
        default_factory=list,
        description="Statement files (stems in jobs_dir) run before each job's own file and "
        "before each `sql` command, e.g. shared table DDL.",
    )
    checkpoint_dir: Path = Field(
        REPO_JOBS.parents[1] / ".cache" / "stack" / "dev" / "flink" / "checkpoints",
        description="Directory the engine writes retained checkpoints to (the dev stack's "
        "DIR/flink/checkpoints); `jobs up` resumes each job from its newest checkpoint "
        "here, so it must be a path this command can list (local disk or a shared mount).",
    )
    checkpoint_interval: str = Field(
        "10 s",
        description="Checkpoint every this often: the exactly-once Kafka sinks commit per "
        "checkpoint, so it is also how late read_committed consumers see rows.",
    )
    resume: bool = Field(
        True, description="`jobs up` restores each job from its newest retained checkpoint."
    )
    state_ttl: str = Field(
        "7 d",
        description="How long join and dedupe state is kept after it was last touched: a "
        "label later than this finds no event (the back office confirms within days).",
    )
    idle_timeout: str = Field(
        "30 s",
        description="A Kafka partition silent this long stops holding the watermark back.",
    )
    watermark_delay_s: int = Field(
        30, ge=0, le=86400, description="Events up to this late still count in their window."
    )
    topic_prefix: str = Field(
        "edge", pattern=_TOPIC_PART, description="Prefix of the topics the bridge writes."
    )
    train_prefix: str = Field(
        "train", pattern=_TOPIC_PART, description="Prefix of the training topics."
    )
    group_id_prefix: str = Field(
        "edgewatch-central",
        pattern=_TOPIC_PART,
        description="Kafka consumer group of a job = '{prefix}-{job}'.",
    )
    transactional_id_prefix: str = Field(
        "edgewatch-central",
        pattern=_TOPIC_PART,
        description="Kafka transactional id prefix of a job's exactly-once sink = "
        "'{prefix}-{job}' (unique per job, stable across restarts).",
    )
    transaction_timeout_ms: int = Field(
        600_000,
        ge=1000,
        description="Kafka transaction timeout of the sinks: longer than a checkpoint plus "
        "a restart, at most the broker's transaction.max.timeout.ms (15 min default).",
    )
    variables: dict[str, str] = Field(
        default_factory=dict,
        description="Further ${name} values for the job files; override the derived ones.",
    )

    @field_validator("checkpoint_interval", "state_ttl", "idle_timeout", mode="after")
    @classmethod
    def _durations(cls, value: str) -> str:
        return _duration(value)

    @field_validator("jobs", "include", mode="after")
    @classmethod
    def _stems(cls, value: list[str]) -> list[str]:
        bad = [name for name in value if not re.match(JOB_NAME, name)]
        if bad:
            raise ValueError(f"job file stems must match {JOB_NAME}: {bad}")
        return value


# flink-sql-connector-kafka relocates the Kafka client; JAAS names its classes.
SHADED_KAFKA = "org.apache.flink.kafka.shaded.org.apache.kafka"


def kafka_client_options(kafka: KafkaSettings) -> str:
    """``kafka``'s security as option lines of a Kafka table's WITH clause (one per line,
    each ending in a comma; empty for PLAINTEXT): the Java client properties the Flink
    Kafka connector passes through.

    The SASL password travels in the statement to the engine, so a job's credentials should
    be a principal of the centre's own with ACLs for the jobs' topics only. A client
    certificate is refused: the Java client wants key and chain in one key store, which
    these settings (the bridge's two PEM files) do not describe.
    """
    if kafka.ssl_certificate_location is not None or kafka.ssl_key_location is not None:
        raise ValueError(
            "kafka.ssl_certificate_location / ssl_key_location: the central jobs do not "
            "support TLS client certificates; use SASL (or set "
            "[central.variables] kafka_client_options yourself)"
        )
    options: dict[str, str] = {}
    if kafka.security_protocol != "PLAINTEXT":
        options["security.protocol"] = kafka.security_protocol
    if kafka.security_protocol.startswith("SASL"):
        assert kafka.sasl_mechanism is not None  # checked by KafkaSettings
        assert kafka.sasl_username is not None
        assert kafka.sasl_password is not None
        kind = "plain.PlainLoginModule" if kafka.sasl_mechanism == "PLAIN" else (
            "scram.ScramLoginModule")  # fmt: skip
        module = f"{SHADED_KAFKA}.common.security.{kind}"
        options["sasl.mechanism"] = kafka.sasl_mechanism
        options["sasl.jaas.config"] = (
            f'{module} required username="{_jaas_quoted(kafka.sasl_username)}" '
            f'password="{_jaas_quoted(kafka.sasl_password.get_secret_value())}";'
        )
    if kafka.ssl_ca_location is not None:
        options["ssl.truststore.type"] = "PEM"
        options["ssl.truststore.location"] = str(kafka.ssl_ca_location)
    return "".join(
        f"\n    'properties.{key}' = '{_sql_quoted(value)}'," for key, value in options.items()
    )


def _jaas_quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _sql_quoted(value: str) -> str:
    return value.replace("'", "''")


class CentralSettings(ServiceSettings):
    """``central.toml`` as ``edgewatch-central`` reads it."""

    service_name: ClassVar[str] = "central"

    kafka: KafkaSettings = Field(
        default_factory=KafkaSettings,
        description="The central Kafka cluster the jobs read and write (bootstrap servers "
        "are handed to the job files as ${bootstrap_servers}).",
    )
    central: CentralEngineSettings = Field(
        default_factory=CentralEngineSettings, description="The stream SQL engine and its jobs."
    )
    retrain: dict[str, Any] = Field(
        default_factory=dict,
        description="Retraining ([retrain]); read and checked by `edgewatch-models retrain`.",
    )

    @model_validator(mode="after")
    def _jobs_can_connect(self) -> Self:
        if "kafka_client_options" not in self.central.variables:
            kafka_client_options(self.kafka)  # refuses what the jobs cannot do, at load time
        return self

    def job_variables(self, job: str) -> dict[str, str]:
        """The ${name} values for job file ``job`` (see the module docstring)."""
        c = self.central
        edge, train = c.topic_prefix, c.train_prefix
        derived = {
            "bootstrap_servers": self.kafka.bootstrap_servers,
            "checkpoint_interval": c.checkpoint_interval,
            "state_ttl": c.state_ttl,
            "idle_timeout": c.idle_timeout,
            "watermark_delay_s": str(c.watermark_delay_s),
            "group_id": f"{c.group_id_prefix}-{job}",
            "transactional_id_prefix": f"{c.transactional_id_prefix}-{job}",
            "transaction_timeout_ms": str(c.transaction_timeout_ms),
            "raw_payments_topic": f"{edge}.raw.payments",
            "raw_sensors_topic": f"{edge}.raw.sensors",
            "labels_topic": f"{edge}.labels",
            "scored_topic_pattern": re.escape(f"{edge}.scored.") + ".+",
            "deadletter_topic": f"{edge}.deadletter",
            "monitoring_topic": f"{edge}.monitoring",
            "train_payments_topic": f"{train}.payments",
            "train_sensors_topic": f"{train}.sensors",
        }
        if "kafka_client_options" not in c.variables:
            derived["kafka_client_options"] = kafka_client_options(self.kafka)
        return derived | c.variables

    def summary(self) -> list[str]:
        c = self.central
        return [
            f"sql_gateway = {c.sql_gateway}",
            f"flink_rest = {c.flink_rest}",
            f"kafka = {self.kafka.bootstrap_servers}",
            f"jobs = {', '.join(c.jobs)} from {c.jobs_dir}",
            f"checkpoints every {c.checkpoint_interval} into {c.checkpoint_dir}",
        ]

    def input_files(self) -> dict[str, Path]:
        files = {f"kafka.{name}": path for name, path in self.kafka.input_files().items()}
        files["central.jobs_dir"] = self.central.jobs_dir
        for name in [*self.central.include, *self.central.jobs]:
            files[f"central.jobs[{name}]"] = self.central.jobs_dir / f"{name}.sql"
        return files
