"""The notebook's toolkit: the central stack from Jupyter, in a few calls (``train`` extra).

``Lab.connect(central.toml)`` reads the one central configuration (``[kafka]``,
``[central]``, ``[retrain]``) as ``edgewatch-central`` (and ``edgewatch-models fleet``) and
``edgewatch-models retrain`` read it, and opens a SQL Gateway session. The rest
wraps what the notebook shows in pandas DataFrames:

- :meth:`Lab.define_tables`: a job file's own ``CREATE TABLE`` statements in this session,
  so an interactive query reads the topics exactly as the continuous job does (read them
  from the start with the hint ``/*+ OPTIONS('scan.startup.mode'='earliest-offset') */``);
- :meth:`Lab.job_statement` and :meth:`Lab.job_status`: the job's ``INSERT`` and its state;
- :func:`gate_table`: the gate's rules with both figures and the verdict;
- :meth:`Lab.fleet`, :meth:`Lab.wait_for_version` and :meth:`Lab.scored_versions`: which
  box runs which version (``{prefix}.status``, ``{prefix}.rollouts`` via
  :mod:`models.fleet`), and how many scored events each model version produced
  (``{prefix}.scored.{stream}``), all read centrally from Kafka.

No logic of its own beyond reshaping: training, the gate and publishing are
:mod:`models.retrain`; the SQL client is :mod:`models.central.gateway`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.central.gateway import SqlClient
from models.central.jobs import Jobs
from models.central.settings import CentralSettings
from models.fleet import read_fleet
from models.gate import Verdict
from models.kafka_read import read_to_end
from models.retrain_settings import RetrainConfig
from plumbing.errors import EdgewatchError


@dataclass
class Lab:
    """One notebook's connection to the central stack."""

    config_path: Path
    central: CentralSettings
    retrain: RetrainConfig
    sql: SqlClient

    @classmethod
    def connect(cls, config_path: Path) -> Lab:
        central = CentralSettings.load(config_path)
        sql = SqlClient(central.central.sql_gateway, timeout_s=central.central.request_timeout_s)
        return cls(config_path, central, RetrainConfig.load(config_path), sql)

    def __repr__(self) -> str:
        c = self.central.central
        return (
            f"Lab({self.config_path}: kafka {self.central.kafka.bootstrap_servers}, "
            f"SQL gateway {c.sql_gateway}, topics {c.topic_prefix}.* and {c.train_prefix}.*)"
        )

    # -- SQL -----------------------------------------------------------------------------------
    def define_tables(self, job: str) -> list[str]:
        """Run the job file's CREATE TABLE statements here; return the statements' first lines."""
        created = []
        for statement in Jobs(self.central).load(job).setup:
            if statement.lstrip().upper().startswith("CREATE"):
                self.sql.execute(statement)
                created.append(statement.strip().splitlines()[0].rstrip(" ("))
        return created

    def job_statement(self, job: str) -> str:
        """The INSERT the continuous job runs (placeholders filled in)."""
        return Jobs(self.central).load(job).insert

    def job_status(self) -> Any:
        import pandas as pd

        status = Jobs(self.central).status()
        return pd.DataFrame(
            [
                {
                    "job": name,
                    "state": info.state if info else "never started",
                    "flink job id": info.job_id if info else None,
                    "running for s": round(info.duration_ms / 1000) if info else None,
                }
                for name, info in status.items()
            ]
        )

    # -- the fleet -----------------------------------------------------------------------------
    def fleet(self) -> Any:
        """One row per box and stream: the model versions it runs and its rollout state."""
        import pandas as pd

        rows = []
        for box in read_fleet(self.central):
            for stream, view in sorted(box.streams.items()):
                last = view.last or {}
                rows.append({
                    "node": box.node, "agent": box.agent, "stream": stream, "model": view.model,
                    "serving": view.active, "candidate": view.candidate, "state": view.state,
                    "last change": last.get("kind"), "why": last.get("reason"),
                })  # fmt: skip
        return pd.DataFrame(rows)

    def wait_for_version(self, model: str, version: int, timeout_s: float = 300.0) -> Any:
        """Poll the fleet view until every box running ``model`` serves ``version``."""
        deadline = time.monotonic() + timeout_s
        while True:
            view = self.fleet()
            mine = view[view["model"] == model] if len(view) else view
            if len(mine) and (mine["serving"] == version).all():
                return view
            if time.monotonic() > deadline:
                raise EdgewatchError(f"not every box serves {model} v{version} after "
                                     f"{timeout_s:.0f} s:\n{view}")  # fmt: skip
            time.sleep(2.0)

    def scored_versions(self, stream: str = "payments") -> Any:
        """Scored events per box and model version, from the scored topic (read to its end)."""
        import pandas as pd

        topic = f"{self.central.central.topic_prefix}.scored.{stream}"
        counts: dict[tuple[str, str, int], int] = {}
        for record in read_to_end(self.central.kafka, topic, self.retrain.retrain.read_timeout_s):
            try:
                event = json.loads(record.value or b"")
                key = (_node(record.headers), str(event["model"]["name"]),
                       int(event["model"]["version"]))  # fmt: skip
            except (ValueError, KeyError, TypeError):
                continue
            counts[key] = counts.get(key, 0) + 1
        return pd.DataFrame(
            [
                {"node": n, "model": m, "version": v, "scored events": c}
                for (n, m, v), c in sorted(counts.items())
            ]
        )


def _node(headers: list[tuple[str, Any]] | None) -> str:
    return next((bytes(v).decode() for k, v in headers or [] if k == "node_id" and v), "?")


def gate_table(verdict: Verdict) -> Any:
    """The gate's rules as a DataFrame: figure, what it was held against, verdict."""
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "rule": r.name,
                "challenger": r.challenger,
                "champion": r.reference,
                "required": r.required,
                "verdict": "pass" if r.passed else "FAIL",
            }
            for r in verdict.rules
        ]
    )
