"""A small typed client for the Flink SQL Gateway REST API (what ksql-python is for KSQL).

    with SqlClient("http://127.0.0.1:8083") as sql:
        sql.execute("CREATE TABLE raw (...) WITH ('connector' = 'kafka', ...)")
        for row in sql.query("SELECT event_id, Amount FROM raw", limit=5):
            print(row)                       # {'event_id': 'e1', 'Amount': 12.5}
        frame = sql.query_frame("SELECT device, COUNT(*) AS n FROM raw GROUP BY device")
        job_id = sql.execute("INSERT INTO sink SELECT ...")   # submitted, runs on

Contract:
- One gateway *session* per client, opened on first use with the client's ``properties``
  (any Flink configuration, e.g. ``{"execution.runtime-mode": "batch"}``) and closed by
  :meth:`SqlClient.close` (or leaving the ``with`` block). Tables created with ``CREATE
  TABLE`` live in that session unless a catalog persists them. A session the gateway no
  longer knows (it restarted, or the session idled out) is replaced by a new one with the
  same properties on the next statement; its tables are gone and must be created again.
- Each statement is an *operation*; its result comes in pages that the client follows
  (``nextResultUri``) until the gateway says ``EOS``. A page with no rows means "nothing new
  yet": the client waits ``poll_interval_s`` (growing to 8x while nothing arrives).
- ``execute`` is for statements run for their effect (DDL, ``SET``, ``INSERT``): it returns
  the id of the Flink job the statement submitted (``INSERT``), else None.
- ``query`` streams rows as dicts (column name → JSON value: numbers, strings, lists for
  ARRAY, dicts for MAP/ROW, timestamps as ISO strings). A streaming query is a *changelog*:
  each row carries a kind, and ``query`` yields by default only the rows that *add* a row
  to the result, ``INSERT`` (a new row) and ``UPDATE_AFTER`` (the new version of a row whose
  old version was retracted); it skips ``UPDATE_BEFORE`` (the old version, retracted) and
  ``DELETE`` (a row that left the result). That reads like a log of the newest values.
  ``changelog=True`` yields every row with its kind under the key ``"_kind"`` instead.
  ``query_frame`` applies the changelog (a retraction removes one equal row) and returns the
  final result as a pandas DataFrame: for results that end (a bounded source, e.g. a Kafka
  table with ``'scan.bounded.mode' = 'latest-offset'``, batch mode, or ``limit=``).
- A query over an unbounded source (a live Kafka topic) never ends by itself, not even
  with ``LIMIT`` in its SQL (Flink keeps the job waiting for input): pass ``limit=`` or
  stop iterating. Leaving a ``query`` generator early (``limit`` reached, ``break``, an
  exception) closes the operation, which cancels the Flink job behind it.
- Errors: an HTTP error or a failed operation raises :class:`SqlEngineError` whose message is
  the engine's root cause (e.g. ``SQL validation failed. From line 1, column 15 to line 1,
  column 20: Object 'nosuch' not found``), not the Java stack trace (kept in ``.trace``).
  A gateway that does not answer raises :class:`GatewayUnavailableError`.

The core (request building, page decoding, root-cause extraction, changelog application) is
pure; :class:`SqlClient` is the thin urllib shell around it. Standard library only (pandas is
imported by ``query_frame`` alone).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Generator, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from plumbing.errors import EdgewatchError

if TYPE_CHECKING:
    import pandas as pd

RowKind = Literal["INSERT", "UPDATE_BEFORE", "UPDATE_AFTER", "DELETE"]
ResultType = Literal["NOT_READY", "PAYLOAD", "EOS"]
ADDING_KINDS: frozenset[str] = frozenset({"INSERT", "UPDATE_AFTER"})
KIND_KEY = "_kind"
API = "/v3"  # Flink 2.x gateways speak v1..v4; v3 has everything used here
_MAX_MESSAGE_LINES = 12


class SqlEngineError(EdgewatchError):
    """The engine refused or failed a statement; ``str()`` is its root-cause message."""

    def __init__(self, message: str, *, trace: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.trace = trace
        self.status = status


class GatewayUnavailableError(SqlEngineError):
    """Nothing answered at the gateway's address (not started, wrong port, network)."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # the logical type's root, e.g. INTEGER, VARCHAR, TIMESTAMP_WITHOUT_TIME_ZONE
    nullable: bool = True


@dataclass(frozen=True)
class Change:
    """One changelog row: its kind and its values by column name."""

    kind: RowKind
    row: dict[str, Any]


@dataclass(frozen=True)
class ResultPage:
    """One decoded page of ``GET …/operations/{op}/result/{token}``."""

    result_type: ResultType
    columns: tuple[Column, ...] = ()
    changes: tuple[Change, ...] = ()
    next_uri: str | None = None
    job_id: str | None = None
    is_query: bool = False
    result_kind: str = ""

    @property
    def done(self) -> bool:
        return self.result_type == "EOS" or self.next_uri is None


@dataclass(frozen=True)
class Request:
    """An HTTP request to the gateway, built without I/O."""

    method: Literal["GET", "POST", "DELETE", "PATCH"]
    path: str
    body: dict[str, Any] | None = field(default=None)

    def encoded_body(self) -> bytes | None:
        return None if self.body is None else json.dumps(self.body).encode()


# Request building -------------------------------------------------------------------------
def open_session(properties: Mapping[str, str] | None = None) -> Request:
    return Request("POST", f"{API}/sessions", {"properties": dict(properties or {})})


def close_session(session: str) -> Request:
    return Request("DELETE", f"{API}/sessions/{session}")


def submit_statement(
    session: str, statement: str, config: Mapping[str, str] | None = None
) -> Request:
    """Run ``statement``; ``config`` is Flink configuration for this statement alone."""
    body: dict[str, Any] = {"statement": statement}
    if config:
        body["executionConfig"] = dict(config)
    return Request("POST", f"{API}/sessions/{session}/statements", body)


def first_page(session: str, operation: str) -> Request:
    return Request(
        "GET", f"{API}/sessions/{session}/operations/{operation}/result/0?rowFormat=JSON"
    )


def close_operation(session: str, operation: str) -> Request:
    return Request("DELETE", f"{API}/sessions/{session}/operations/{operation}/close")


# Decoding ----------------------------------------------------------------------------------
def decode_page(body: Mapping[str, Any]) -> ResultPage:
    """A result page as the gateway sends it with ``rowFormat=JSON``."""
    result_type = body.get("resultType")
    if result_type not in ("NOT_READY", "PAYLOAD", "EOS"):
        raise SqlEngineError(f"unexpected result page from the gateway: {str(body)[:200]}")
    results = body.get("results") or {}
    columns = tuple(
        Column(
            name=str(column["name"]),
            type=str((column.get("logicalType") or {}).get("type", "")),
            nullable=bool((column.get("logicalType") or {}).get("nullable", True)),
        )
        for column in results.get("columns") or ()
    )
    names = [column.name for column in columns]
    changes = tuple(
        Change(kind=item.get("kind", "INSERT"), row=dict(zip(names, item["fields"], strict=True)))
        for item in results.get("data") or ()
    )
    return ResultPage(
        result_type=result_type,
        columns=columns,
        changes=changes,
        next_uri=body.get("nextResultUri"),
        job_id=body.get("jobID"),
        is_query=bool(body.get("isQueryResult", False)),
        result_kind=str(body.get("resultKind", "")),
    )


_CAUSE = re.compile(r"^(?:Caused by: )?([A-Za-z_$][\w$]*(?:\.[\w$]+)+)(?::\s?(.*))?$")


def root_cause(trace: str, *, levels: int = 1) -> str:
    """The engine's own explanation from a Java exception text.

    Takes the deepest ``Caused by:`` message, then walks outward while the enclosing
    message still contains it (Flink wraps Calcite's ``Object 'x' not found`` in ``SQL
    validation failed. From line 1, column 15 …: Object 'x' not found``, which says where).
    ``levels=2`` adds the next enclosing message that says something else (a failed job's
    ``Failed to get metadata for topics [t]. Caused by: UnknownTopicOrPartitionException:
    …``). Qualified Java class names in the messages are shortened to the class name.
    """
    causes = [_short_classes(cause) for cause in _causes(trace)]
    if not causes:
        return trace.strip().splitlines()[0][:500] if trace.strip() else "unknown engine error"
    found = [causes[-1]]
    for outer in reversed(causes[:-1]):
        if found[-1] in outer:
            found[-1] = outer
        elif len(found) < levels:
            found.append(outer)
        else:
            break
    return " Caused by: ".join(reversed(found))


def _causes(trace: str) -> list[str]:
    """The message of each exception in a Java trace, outermost first."""
    causes: list[str] = []
    current: list[str] | None = None
    for line in trace.splitlines():
        if line.startswith(("\tat ", "\t... ", "    at ")) or line.strip() == "":
            current = None
            continue
        match = _CAUSE.match(line)
        if match:
            current = [match.group(2) or match.group(1).rsplit(".", 1)[-1]]
            causes.append("")
        elif current is not None:
            current.append(line)
        else:
            continue
        causes[-1] = "\n".join(current[:_MAX_MESSAGE_LINES]).strip()
    return [cause for cause in causes if cause]


_QUALIFIED = re.compile(r"\b(?:[a-z_$][\w$]*\.)+([A-Z][\w$]*(?:Exception|Error)):")


def _short_classes(message: str) -> str:
    return _QUALIFIED.sub(r"\1:", message)


def error_from_response(status: int, raw: bytes) -> SqlEngineError:
    """A :class:`SqlEngineError` from an HTTP error response of the gateway."""
    text = raw.decode("utf-8", errors="replace")
    try:
        errors = json.loads(text).get("errors") or []
    except (ValueError, AttributeError):
        errors = [text]
    trace = "\n".join(str(item) for item in errors)
    details = [str(item) for item in errors if str(item) != "Internal server error."]
    message = root_cause("\n".join(details)) if details else f"HTTP {status}"
    return SqlEngineError(message, trace=trace, status=status)


def apply_changelog(changes: Iterable[Change]) -> list[dict[str, Any]]:
    """The result a changelog describes: INSERT/UPDATE_AFTER add a row, UPDATE_BEFORE/DELETE
    remove one equal row (the newest such). Rows keep the order they were added in; linear
    in the number of changes."""
    rows: dict[int, dict[str, Any]] = {}
    positions: dict[Hashable, list[int]] = {}
    for sequence, change in enumerate(changes):
        key = _row_key(change.row)
        if change.kind in ADDING_KINDS:
            rows[sequence] = change.row
            positions.setdefault(key, []).append(sequence)
        elif positions.get(key):
            del rows[positions[key].pop()]
    return list(rows.values())


def _row_key(row: dict[str, Any]) -> Hashable:
    """Equal rows, equal keys (rows of one result share their column order)."""
    values = tuple(row.values())
    try:
        hash(values)
    except TypeError:  # ARRAY / MAP / ROW values arrive as lists and dicts
        return json.dumps(values, sort_keys=True, default=str)
    return values


def row_view(change: Change, *, changelog: bool) -> dict[str, Any] | None:
    """What ``query`` yields for one change (None: skipped)."""
    if changelog:
        return {**change.row, KIND_KEY: change.kind}
    return change.row if change.kind in ADDING_KINDS else None


# The I/O shell ------------------------------------------------------------------------------
class SqlClient:
    """One session on a Flink SQL Gateway; see the module docstring for the contract."""

    def __init__(
        self,
        url: str,
        *,
        properties: Mapping[str, str] | None = None,
        timeout_s: float = 30.0,
        execute_timeout_s: float = 180.0,
        poll_interval_s: float = 0.1,
    ) -> None:
        self.url = url.rstrip("/")
        self.properties = dict(properties or {})
        self.timeout_s = timeout_s  # one HTTP request
        self.execute_timeout_s = execute_timeout_s  # one execute(), job submission included
        self.poll_interval_s = poll_interval_s
        self._session: str | None = None

    # Session ---------------------------------------------------------------------------
    @property
    def session(self) -> str:
        if self._session is None:
            self._session = str(self._send(open_session(self.properties))["sessionHandle"])
        return self._session

    def set(self, key: str, value: str) -> None:
        """Set one Flink option for the rest of this session (``SET 'key' = 'value'``)."""
        self.execute(f"SET '{_quote(key)}' = '{_quote(value)}'")
        self.properties[key] = value

    def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            with contextlib.suppress(SqlEngineError):  # expired or vanished: closed already
                self._send(close_session(session))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # Statements ------------------------------------------------------------------------
    def execute(self, statement: str, *, config: Mapping[str, str] | None = None) -> str | None:
        """Run a statement for its effect; return the job id it submitted, if any."""
        job_id = None
        deadline = time.monotonic() + self.execute_timeout_s
        for page in self._pages(statement, config, deadline=deadline):
            job_id = page.job_id or job_id
            if job_id is None and page.result_kind == "SUCCESS_WITH_CONTENT":
                job_id = _job_id_column(page)
        return job_id

    def query(
        self,
        sql: str,
        *,
        limit: int | None = None,
        changelog: bool = False,
        config: Mapping[str, str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Yield the rows of ``sql`` as they arrive (see the module docstring for kinds);
        stop after ``limit`` rows. Runs until the result ends or the caller stops."""
        count = 0
        if limit is not None and limit <= 0:
            return
        pages = self._pages(sql, config, deadline=None)
        try:
            for page in pages:
                for change in page.changes:
                    row = row_view(change, changelog=changelog)
                    if row is None:
                        continue
                    yield row
                    count += 1
                    if limit is not None and count >= limit:
                        return
        finally:
            pages.close()  # an unfinished operation is closed (its job cancelled) now

    def query_frame(
        self,
        sql: str,
        *,
        limit: int | None = None,
        timeout_s: float | None = None,
        config: Mapping[str, str] | None = None,
    ) -> pd.DataFrame:
        """The final result of a query that ends, as a DataFrame (pandas needed)."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise EdgewatchError("query_frame needs pandas (pip install pandas)") from exc
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        changes: list[Change] = []
        columns: tuple[Column, ...] = ()
        pages = self._pages(sql, config, deadline=deadline)
        try:
            for page in pages:
                columns = columns or page.columns
                changes.extend(page.changes)
                if limit is not None and len(apply_changelog(changes)) >= limit:
                    break
        finally:
            pages.close()
        rows = apply_changelog(changes)[:limit]
        return pd.DataFrame(rows, columns=[column.name for column in columns])

    # Plumbing --------------------------------------------------------------------------
    def _pages(
        self, statement: str, config: Mapping[str, str] | None, *, deadline: float | None
    ) -> Generator[ResultPage, None, None]:
        session = self.session
        try:
            submitted = self._send(submit_statement(session, statement, config))
        except SqlEngineError as exc:
            if not _session_gone(exc, session):
                raise
            # The gateway restarted (or the session idled out): a new session, same
            # properties. Tables created in the old one are gone with it.
            self._session = None
            session = self.session
            submitted = self._send(submit_statement(session, statement, config))
        operation = str(submitted["operationHandle"])
        request = first_page(session, operation)
        finished = False
        idle = 0
        try:
            while True:
                page = decode_page(self._send(request))
                if page.result_type != "NOT_READY":
                    yield page
                if page.done:
                    finished = True
                    return
                request = Request("GET", page.next_uri or "")
                if page.changes:
                    idle = 0
                    continue
                if deadline is not None and time.monotonic() > deadline:
                    raise SqlEngineError(
                        f"no end of result within the time limit: {_head(statement)}"
                    )
                time.sleep(min(self.poll_interval_s * 2 ** min(idle, 3), 1.0))
                idle += 1
        finally:
            if not finished:
                with contextlib.suppress(SqlEngineError):  # it may have ended meanwhile
                    self._send(close_operation(session, operation))

    def _send(self, request: Request) -> dict[str, Any]:
        return request_json(request, self.url, timeout_s=self.timeout_s, what="SQL Gateway")


def request_json(
    request: Request, base_url: str, *, timeout_s: float, what: str = "Flink"
) -> dict[str, Any]:
    """Send ``request`` to ``base_url`` (the gateway or Flink's REST API, which answer errors
    alike) and decode the JSON answer; errors become :class:`SqlEngineError`."""
    http = urllib.request.Request(  # noqa: S310 - the URL is the configured engine
        base_url.rstrip("/") + request.path,
        data=request.encoded_body(),
        method=request.method,
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(http, timeout=timeout_s) as response:  # noqa: S310
            raw = response.read()
    except urllib.error.HTTPError as exc:
        raise error_from_response(exc.code, exc.read()) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise GatewayUnavailableError(f"{what} at {base_url} does not answer: {exc}") from exc
    return dict(json.loads(raw)) if raw.strip() else {}


def _session_gone(error: SqlEngineError, session: str) -> bool:
    return f"Session '{session}' does not exist" in error.message


def _job_id_column(page: ResultPage) -> str | None:
    for change in page.changes:
        value = change.row.get("job id")
        if isinstance(value, str):
            return value
    return None


def _quote(text: str) -> str:
    return text.replace("'", "''")


def _head(statement: str) -> str:
    flat = " ".join(statement.split())
    return flat if len(flat) <= 80 else flat[:77] + "..."
