"""The continuous jobs of ``deploy/central/*.sql``: submit, list, cancel, resume.

Contract:
- A job is one file ``NAME.sql``: ``;``-separated statements (``SET`` lines, table DDL,
  then exactly one ``INSERT INTO``, the last statement). ``NAME`` (the file stem) is the
  Flink job name: ``status`` and ``down`` find a job by it, ``up`` never starts a second
  copy of a job that is still alive.
- ``${name}`` placeholders (``string.Template``; the files hold no other ``$``) are filled
  in from :meth:`CentralSettings.job_variables`; a placeholder without a value is an error
  naming file and placeholder. Statements are never assembled from Python strings.
- ``up`` runs each file in a fresh gateway session whose properties set checkpointing on
  (``checkpoint_interval``; a ``SET`` in the file may override it). The ``INSERT`` gets, for
  that statement alone and above anything the file sets: ``pipeline.name`` = NAME,
  ``execution.checkpointing.dir`` = ``checkpoint_dir/NAME`` and, when a retained checkpoint
  of NAME exists there, ``execution.state-recovery.path`` = the newest one. So a job whose
  engine was killed (``kill -9``) or cancelled continues from its last checkpoint: Kafka
  offsets and dedupe/join state come back, rows since that checkpoint are recomputed, and
  the exactly-once sinks' uncommitted transactions are aborted, so read_committed readers
  see each row once.
- ``down`` cancels (Flink REST ``PATCH /jobs/{id}?mode=cancel``) rather than stopping with a
  savepoint: checkpoints are retained on cancellation (``RETAIN_ON_CANCELLATION`` in the
  stack's config), so the next ``up`` resumes from the newest one, at the price of redoing
  at most one checkpoint interval of work. It waits until the jobs are no longer alive.
- Checkpoint layout: ``checkpoint_dir/NAME/<flink job id>/chk-N/_metadata``; the newest
  ``_metadata`` (by modification time, then N) is the one resumed from. Older job-id
  directories are left for the operator (each holds at most ``num-retained`` checkpoints).

The core (statement splitting, placeholder filling, overview decoding, checkpoint choice) is
pure or reads files only; :class:`Jobs` is the I/O shell over the gateway and Flink REST.
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.central.gateway import Request, SqlClient, request_json, root_cause
from models.central.settings import CentralSettings
from plumbing.errors import EdgewatchError

ALIVE_STATES = frozenset(
    {"INITIALIZING", "CREATED", "RUNNING", "FAILING", "CANCELLING", "RESTARTING", "SUSPENDED",
     "RECONCILING"}
)  # fmt: skip
_INSERT = re.compile(r"^\s*(INSERT\s+(INTO|OVERWRITE)|EXECUTE\s+(STATEMENT\s+SET|INSERT))\b", re.I)


class JobFileError(EdgewatchError):
    """A job file that cannot be run as it is (missing, bad placeholder, wrong shape)."""


@dataclass(frozen=True)
class JobFile:
    """One job's statements, placeholders filled in, comments removed."""

    name: str
    path: Path
    statements: tuple[str, ...]

    @property
    def setup(self) -> tuple[str, ...]:
        return self.statements[:-1]

    @property
    def insert(self) -> str:
        return self.statements[-1]


@dataclass(frozen=True)
class JobInfo:
    """A job as Flink's ``/jobs/overview`` lists it."""

    name: str
    job_id: str
    state: str
    start_time_ms: int
    duration_ms: int

    @property
    def alive(self) -> bool:
        return self.state in ALIVE_STATES


@dataclass(frozen=True)
class Submitted:
    """What ``up`` did for one job."""

    name: str
    job_id: str | None
    restored_from: Path | None = None
    already_running: bool = False


# Pure core ---------------------------------------------------------------------------------
def split_statements(text: str) -> list[str]:
    """Split SQL text at ``;`` outside quotes and comments; comments are dropped.

    Knows ``'…'`` strings (``''`` escapes a quote), ```…``` and ``"…"`` identifiers, ``--``
    line comments and ``/* … */`` block comments, and keeps ``EXECUTE STATEMENT SET BEGIN
    … END;`` whole.
    """
    statements: list[str] = []
    current: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            current.append(" ")
            continue
        if char in "'`\"":
            end = i + 1
            while end < n:
                if text[end] == char:
                    if end + 1 < n and text[end + 1] == char:  # doubled: an escaped quote
                        end += 2
                        continue
                    break
                end += 1
            current.append(text[i : end + 1])
            i = end + 1
            continue
        if char == ";" and not _inside_statement_set("".join(current)):
            statements.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    statements.append("".join(current))
    return [cleaned for cleaned in (_tidy(s) for s in statements) if cleaned]


def _inside_statement_set(sql: str) -> bool:
    words = sql.upper().split()
    return "BEGIN" in words and words[:3] == ["EXECUTE", "STATEMENT", "SET"] and "END" not in words


def _tidy(statement: str) -> str:
    lines = [line.rstrip() for line in statement.strip().splitlines()]
    return "\n".join(line for line in lines if line.strip())


def fill_placeholders(text: str, variables: Mapping[str, str], *, source: str) -> str:
    """``${name}`` → its value; a name without a value (or a stray ``$``) is an error."""
    try:
        return string.Template(text).substitute(variables)
    except KeyError as exc:
        raise JobFileError(f"{source}: no value for placeholder ${{{exc.args[0]}}}") from exc
    except ValueError as exc:
        raise JobFileError(f"{source}: bad placeholder ({exc}); write ${{name}}") from exc


def parse_job(name: str, path: Path, text: str, variables: Mapping[str, str],
              include: Sequence[tuple[Path, str]] = ()) -> JobFile:  # fmt: skip
    """The job in ``text`` (with ``include`` files' statements first), checked for shape."""
    statements: list[str] = []
    for source, body in [*include, (path, text)]:  # comments go first: they may hold a $
        statements += [fill_placeholders(statement, variables, source=str(source))
                       for statement in split_statements(body)]  # fmt: skip
    inserts = [index for index, statement in enumerate(statements) if _INSERT.match(statement)]
    if len(inserts) != 1 or inserts[0] != len(statements) - 1:
        raise JobFileError(
            f"{path}: a job file ends with exactly one INSERT INTO (found {len(inserts)} "
            f"INSERT statement(s) among {len(statements)})"
        )
    return JobFile(name=name, path=path, statements=tuple(statements))


def decode_overview(body: Mapping[str, Any]) -> list[JobInfo]:
    """Flink REST ``GET /jobs/overview``, newest first."""
    jobs = [
        JobInfo(
            name=str(item.get("name", "")),
            job_id=str(item["jid"]),
            state=str(item.get("state", "")),
            start_time_ms=int(item.get("start-time", 0)),
            duration_ms=int(item.get("duration", 0)),
        )
        for item in body.get("jobs") or ()
    ]
    return sorted(jobs, key=lambda job: job.start_time_ms, reverse=True)


def failure_message(body: Mapping[str, Any]) -> str | None:
    """The newest failure of Flink REST ``GET /jobs/{id}/exceptions``, as two levels of
    root cause (what failed, and why)."""
    entries = (body.get("exceptionHistory") or {}).get("entries") or []
    if not entries:
        return None
    return root_cause(str(entries[0].get("stacktrace", "")), levels=2)


def latest_checkpoint(checkpoint_dir: Path, name: str) -> Path | None:
    """The newest complete retained checkpoint of job ``name`` (a ``chk-N`` directory)."""
    candidates = []
    for metadata in (checkpoint_dir / name).glob("*/chk-*/_metadata"):
        try:
            number = int(metadata.parent.name.removeprefix("chk-"))
            candidates.append((metadata.stat().st_mtime, number, metadata.parent))
        except (ValueError, OSError):
            continue  # not a checkpoint, or deleted while we looked
    return max(candidates)[2] if candidates else None


# I/O shell ---------------------------------------------------------------------------------
class Jobs:
    """Submit, list and cancel the jobs configured in ``settings.central``."""

    def __init__(self, settings: CentralSettings) -> None:
        self.settings = settings
        self.central = settings.central

    def load(self, name: str) -> JobFile:
        path = self.central.jobs_dir / f"{name}.sql"
        include = [(p, _read(p)) for p in (self.central.jobs_dir / f"{i}.sql"
                                           for i in self.central.include)]  # fmt: skip
        return parse_job(name, path, _read(path), self.settings.job_variables(name), include)

    def list_jobs(self) -> list[JobInfo]:
        """Every job the Flink cluster knows (ours and others), newest first."""
        return decode_overview(self._rest(Request("GET", "/jobs/overview")))

    def alive(self, name: str) -> list[JobInfo]:
        return [job for job in self.list_jobs() if job.name == name and job.alive]

    def submit(self, name: str, *, resume: bool | None = None) -> Submitted:
        """Submit job ``name`` (resuming from its newest retained checkpoint when asked)."""
        job = self.load(name)
        resume = self.central.resume if resume is None else resume
        restore = latest_checkpoint(self.central.checkpoint_dir, name) if resume else None
        forced = {
            "pipeline.name": name,
            "execution.checkpointing.dir": (self.central.checkpoint_dir / name).resolve().as_uri(),
        }
        if restore is not None:
            forced["execution.state-recovery.path"] = restore.resolve().as_uri()
        properties = {"execution.checkpointing.interval": self.central.checkpoint_interval}
        with SqlClient(self.central.sql_gateway, properties=properties,
                       timeout_s=self.central.request_timeout_s) as sql:  # fmt: skip
            for statement in job.setup:
                sql.execute(statement)
            job_id = sql.execute(job.insert, config=forced)
        return Submitted(name=name, job_id=job_id, restored_from=restore)

    def up(
        self, names: Iterable[str] | None = None, *, resume: bool | None = None
    ) -> list[Submitted]:
        """Submit each configured job that is not alive already."""
        done = []
        for name in names or self.central.jobs:
            running = self.alive(name)
            if running:
                done.append(Submitted(name, running[0].job_id, already_running=True))
            else:
                done.append(self.submit(name, resume=resume))
        return done

    def status(self, names: Iterable[str] | None = None) -> dict[str, JobInfo | None]:
        """Per configured job: its newest run (alive or not), or None if never seen."""
        jobs = self.list_jobs()
        return {
            name: next((job for job in jobs if job.name == name), None)
            for name in (names or self.central.jobs)
        }

    def last_failure(self, job_id: str) -> str | None:
        """Why the job last failed (the engine's root cause), or None if it never did."""
        body = self._rest(Request("GET", f"/jobs/{job_id}/exceptions?maxExceptions=1"))
        return failure_message(body)

    def cancel(self, name: str, *, timeout_s: float = 60.0) -> list[str]:
        """Cancel every live run of ``name``; return their job ids once none is alive."""
        ids = [job.job_id for job in self.alive(name)]
        for job_id in ids:
            self._rest(Request("PATCH", f"/jobs/{job_id}?mode=cancel"))
        deadline = time.monotonic() + timeout_s
        while ids and self.alive(name):
            if time.monotonic() > deadline:
                raise EdgewatchError(f"job {name} still alive {timeout_s:.0f}s after cancel")
            time.sleep(0.2)
        return ids

    def down(self, names: Iterable[str] | None = None) -> dict[str, list[str]]:
        return {name: self.cancel(name) for name in (names or self.central.jobs)}

    def _rest(self, request: Request) -> dict[str, Any]:
        return request_json(request, self.central.flink_rest,
                            timeout_s=self.central.request_timeout_s)  # fmt: skip


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise JobFileError(f"cannot read job file {path}: {exc.strerror or exc}") from exc
