"""``edgewatch-central``: stream SQL on the central Kafka, from a shell.

    edgewatch-central validate-config central.toml
    edgewatch-central sql "CREATE TABLE t (...) WITH (...); SELECT * FROM t" [--json] [--limit N]
    edgewatch-central jobs up|status|down [--job NAME] [--fresh] [--config central.toml]

``sql`` runs its ``;``-separated statements in one gateway session (after the files of
``central.include`` and ``--init``) and prints the rows of the last one as they arrive:
tab-separated under a header, or one JSON object per line with ``--json``. Ctrl-C ends an
unbounded query (its Flink job is cancelled). ``jobs`` manages the continuous jobs of
``deploy/central/*.sql`` (see models/central/jobs.py for resume and cancel semantics);
``jobs status`` exits 3 when a configured job is not running.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from models.central.gateway import SqlClient
from models.central.jobs import JobInfo, Jobs, split_statements
from models.central.settings import CentralSettings
from plumbing.cli import base_parser, dispatch, require_settings


def cmd_sql(args: argparse.Namespace) -> int:
    settings = require_settings(CentralSettings, args.config)
    c = settings.central
    files = [c.jobs_dir / f"{name}.sql" for name in c.include] + list(args.init or [])
    setup = [s for path in files for s in split_statements(path.read_text(encoding="utf-8"))]
    statements = split_statements(args.statement)
    if not statements:
        print("error: no statement given", file=sys.stderr)
        return 2
    with SqlClient(c.sql_gateway, timeout_s=c.request_timeout_s) as sql:
        for statement in [*setup, *statements[:-1]]:
            sql.execute(statement)
        rows = sql.query(statements[-1], limit=args.limit, changelog=args.changelog)
        try:
            print_rows(rows, as_json=args.json)
        except KeyboardInterrupt:
            return 130
    return 0


def print_rows(rows: Any, *, as_json: bool) -> int:
    """Print rows as they come (JSON lines, or a header and tab-separated values)."""
    count = 0
    for row in rows:
        if as_json:
            print(json.dumps(row, default=str, ensure_ascii=False), flush=True)
        else:
            if count == 0:
                print("\t".join(row), flush=True)
            print("\t".join(_cell(value) for value in row.values()), flush=True)
        count += 1
    return count


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def cmd_jobs(args: argparse.Namespace) -> int:
    settings = require_settings(CentralSettings, args.config)
    jobs = Jobs(settings)
    names = args.names or None
    if args.action == "up":
        for done in jobs.up(names, resume=not args.fresh):
            how = "already running" if done.already_running else "submitted"
            origin = f", resumed from {done.restored_from}" if done.restored_from else ""
            print(f"{done.name}: {how} as {done.job_id}{origin}")
    elif args.action == "down":
        for name, ids in jobs.down(names).items():
            print(f"{name}: " + (f"cancelled {', '.join(ids)}" if ids else "not running"))
    else:
        status = jobs.status(names)
        if args.json:
            print(json.dumps({name: _job_json(job) for name, job in status.items()}, indent=2))
        else:
            for name, job in status.items():
                print(f"{name}\t" + (_job_line(job) if job else "never submitted"))
                if job is not None and job.state not in ("RUNNING", "CANCELED", "FINISHED"):
                    failure = jobs.last_failure(job.job_id)
                    if failure:
                        print(f"\tlast failure: {failure}")
        return 0 if all(job is not None and job.alive for job in status.values()) else 3
    return 0


def _job_json(job: JobInfo | None) -> dict[str, Any] | None:
    if job is None:
        return None
    return {"job_id": job.job_id, "state": job.state, "start_time_ms": job.start_time_ms}


def _job_line(job: JobInfo) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time_ms / 1000))
    return f"{job.state}\t{job.job_id}\tstarted {started}"


def main(argv: list[str] | None = None) -> int:
    parser, sub = base_parser(
        "edgewatch-central", "Stream SQL on the central Kafka: queries and continuous jobs."
    )
    sql = sub.add_parser("sql", help="run statements, print the last one's rows")
    sql.add_argument("statement", help="one or more ';'-separated Flink SQL statements")
    sql.add_argument("--config", type=Path, help="central.toml")
    sql.add_argument("--init", type=Path, action="append", help="statement file run first")
    sql.add_argument("--json", action="store_true", help="one JSON object per row")
    sql.add_argument("--limit", type=int, help="stop after this many rows")
    sql.add_argument(
        "--changelog", action="store_true", help="every changelog row, its kind in '_kind'"
    )
    sql.set_defaults(handler=cmd_sql)
    jobs = sub.add_parser("jobs", help="submit, list or cancel the continuous jobs")
    jobs.add_argument("action", choices=["up", "status", "down"])
    jobs.add_argument("--config", type=Path, help="central.toml")
    jobs.add_argument("--job", dest="names", action="append", help="only this job (repeat)")
    jobs.add_argument("--json", action="store_true", help="status as JSON")
    jobs.add_argument(
        "--fresh",
        action="store_true",
        help="up: start from the topics' group offsets instead of the newest retained "
        "checkpoint (after a change of a job's query that its old state does not fit)",
    )
    jobs.set_defaults(handler=cmd_jobs)
    return dispatch(parser.parse_args(argv), CentralSettings)


if __name__ == "__main__":
    sys.exit(main())
