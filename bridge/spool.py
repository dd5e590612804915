"""A durable, bounded, ordered spool on SQLite (WAL): where messages wait while Kafka cannot
take them at once (bridge.forwarder decides which messages come here).

A group of messages is committed in one transaction (one fsync with ``synchronous=FULL``)
before their MQTT acks go out; the sender reads rows in sequence order and deletes them once
Kafka acknowledged everything up to them. Sequence numbers never repeat (AUTOINCREMENT), so
order survives restarts.

Bounds: total bytes and age. Overflow policies: ``pause`` (the appender stops, acks are
withheld, the broker's flow control stops intake) or ``drop_oldest_raw`` (the oldest raw
rows make room; scored, alerts, dead-letter and status rows are kept; if no raw row is
left, it pauses). Every drop is counted by kind.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

OverflowPolicy = Literal["pause", "drop_oldest_raw"]
RECENT_MAX_ROWS = 2048  # committed rows kept in memory for the sender
ROW_OVERHEAD = 64  # bytes counted per row beyond key and value (topic, headers, index)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    key BLOB,
    value BLOB NOT NULL,
    headers BLOB NOT NULL,
    created REAL NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS spool_kind_seq ON spool (kind, seq);
"""


@dataclass(slots=True, eq=False)
class Record:
    """One message on its way to Kafka.

    Stored: kind to headers, ``created`` and ``seq`` (0 until the spool holds it). The rest
    is the forwarder's bookkeeping while the record is in flight (see bridge.forwarder).
    """

    kind: str
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    created: float = 0.0
    seq: int = 0
    ack: tuple[int, int] | None = None  # MQTT (message id, connection) still to acknowledge
    handed: float = 0.0  # monotonic time it was handed to the producer
    done: bool = False  # delivered, or dealt with for good
    origin: Record | None = None  # the record this dead-letter record stands in for

    @property
    def size(self) -> int:
        return len(self.value) + len(self.key or b"") + ROW_OVERHEAD


# Headers are stored as "name\x00value\x00name\x00value": cheap both ways, and neither MQTT
# topics nor our header values contain NUL (event ids are printable by contract).
def _encode_headers(headers: list[tuple[str, bytes]]) -> bytes:
    return b"\x00".join(part for k, v in headers for part in (k.encode(), v))


def _decode_headers(blob: bytes) -> list[tuple[str, bytes]]:
    if not blob:
        return []
    parts = blob.split(b"\x00")
    return list(zip(map(bytes.decode, parts[0::2]), parts[1::2], strict=True))


class SpoolFullError(Exception):
    """No room, and the policy says wait."""


class Spool:
    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        max_age_s: float,
        policy: OverflowPolicy = "pause",
        cache_kib: int = 2048,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.policy = policy
        self.cache_kib = cache_kib
        self.dropped: Counter[str] = Counter()  # by kind, policy drops
        self.expired: Counter[str] = Counter()  # by kind, age limit
        self._lock = threading.Lock()
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        db = self._db()
        db.executescript(_SCHEMA)
        row = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(MAX(seq), 0) FROM spool"
        ).fetchone()
        self._rows, self._bytes, self._last_seq = int(row[0]), int(row[1]), int(row[2])
        # Groups just committed, in seq order: the sender reads these from memory instead
        # of from SQLite while it keeps up (bounded; beyond it, SQLite serves).
        self._recent: deque[list[Record]] = deque()
        self._recent_rows = 0
        self.rows_at_open = self._rows

    def _db(self) -> sqlite3.Connection:
        """One connection per thread (SQLite connections are not shared across threads)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(f"PRAGMA cache_size=-{self.cache_kib}")
            db.execute("PRAGMA temp_store=MEMORY")
            self._local.db = db
        return db

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        return self._rows

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def last_seq(self) -> int:
        """The highest sequence number ever handed out (rows may be gone since)."""
        return self._last_seq

    def oldest_age_s(self) -> float:
        oldest = self._oldest_created()
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    def _oldest_created(self) -> float | None:
        """Creation time of the first row: rows are appended in time order, so one index
        lookup instead of a scan of the whole spool (it runs every second)."""
        row = self._db().execute("SELECT created FROM spool ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else float(row[0])

    # -- writing ---------------------------------------------------------------------------------
    def append(self, records: Sequence[Record]) -> int:
        """Store a prefix of ``records`` durably in one transaction; returns how many.

        As many as fit (after the overflow policy made what room it may) are stored, in
        order, and get their ``seq`` and ``created``; the caller acks exactly those. Raises
        SpoolFullError when none fit.
        """
        sizes = [r.size for r in records]
        incoming = sum(sizes)
        if self._bytes + incoming > self.max_bytes:
            try:
                self._make_room(incoming)
            except SpoolFullError:
                room = self.max_bytes - self._bytes
                fitting = 0
                while fitting < len(sizes) and sizes[fitting] <= room:
                    room -= sizes[fitting]
                    fitting += 1
                if fitting == 0:
                    raise
                records, incoming = records[:fitting], sum(sizes[:fitting])
        now = time.time()
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            for record in records:
                record.created = record.created or now
            db.executemany(
                "INSERT INTO spool (kind, topic, key, value, headers, created, size)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (r.kind, r.topic, r.key, r.value, _encode_headers(r.headers),
                     r.created, r.size)
                    for r in records
                ],
            )  # fmt: skip
            # One writer inside one transaction: AUTOINCREMENT hands out consecutive seqs.
            (last,) = db.execute("SELECT last_insert_rowid()").fetchone()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        stored = list(records)
        for seq, record in enumerate(stored, start=int(last) - len(stored) + 1):
            record.seq = seq
        with self._lock:
            self._rows += len(stored)
            self._bytes += incoming
            self._last_seq = int(last)
            if self._recent_rows + len(stored) <= RECENT_MAX_ROWS:
                self._recent.append(stored)
                self._recent_rows += len(stored)
        return len(stored)

    def _make_room(self, needed: int) -> None:
        excess = self._bytes + needed - self.max_bytes
        if self.policy == "pause":
            raise SpoolFullError(f"spool holds {self._bytes} of {self.max_bytes} bytes")
        db = self._db()
        freed = count = 0
        victims: list[int] = []
        for seq, size in db.execute("SELECT seq, size FROM spool WHERE kind = 'raw' ORDER BY seq"):
            victims.append(seq)
            freed += size
            count += 1
            if freed >= excess:
                break
        if victims:
            self._delete(victims, freed)
            self.dropped["raw"] += count
        if freed < excess:
            raise SpoolFullError("spool is full of rows the policy keeps")

    def _delete(self, seqs: list[int], size: int) -> None:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        deleted = 0
        for chunk in _chunks(seqs, 500):
            marks = ",".join("?" * len(chunk))
            sql = f"DELETE FROM spool WHERE seq IN ({marks})"  # noqa: S608 - only placeholders
            deleted += db.execute(sql, chunk).rowcount
        db.execute("COMMIT")
        with self._lock:
            self._rows -= deleted
            self._bytes -= size
            self._forget_recent()

    def delete_through(self, seq: int) -> int:
        """Forget every row with sequence <= ``seq`` (all delivered)."""
        return self._delete_where("seq <= ?", seq)

    def _delete_where(self, condition: str, value: float) -> int:
        """Delete the rows matching ``condition`` in one transaction; keep the totals."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        where = f"FROM spool WHERE {condition}"  # only the literal conditions of this class
        row = db.execute(f"SELECT COUNT(*), COALESCE(SUM(size), 0) {where}", (value,)).fetchone()
        db.execute(f"DELETE {where}", (value,))
        db.execute("COMMIT")
        with self._lock:
            self._rows -= int(row[0])
            self._bytes -= int(row[1])
        return int(row[0])

    def expire(self) -> int:
        """Drop rows older than max_age_s, counted by kind."""
        cutoff = time.time() - self.max_age_s
        oldest = self._oldest_created()
        if oldest is None or oldest >= cutoff:
            return 0  # the common case, without scanning the spool
        db = self._db()
        kinds = db.execute(
            "SELECT kind, COUNT(*) FROM spool WHERE created < ? GROUP BY kind", (cutoff,)
        ).fetchall()
        if not kinds:
            return 0
        deleted = self._delete_where("created < ?", cutoff)
        with self._lock:
            self._forget_recent()
        for kind, count in kinds:
            self.expired[kind] += int(count)
        return deleted

    # -- reading ---------------------------------------------------------------------------------
    def read_after(self, seq: int, limit: int) -> list[Record]:
        """Up to ``limit`` rows after ``seq``, in order (from memory when just committed)."""
        with self._lock:
            if seq >= self._last_seq:
                return []
            recent = self._recent_after(seq, limit)
        if recent:
            return recent
        rows = (
            self._db()
            .execute(
                "SELECT seq, kind, topic, key, value, headers, created FROM spool"
                " WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            )
            .fetchall()
        )
        return [
            Record(kind, topic, key, value, _decode_headers(headers), created, seq_)
            for seq_, kind, topic, key, value, headers, created in rows
        ]

    def _forget_recent(self) -> None:
        """Rows were dropped (policy, age): the cache may hold some; SQLite is the truth."""
        self._recent.clear()
        self._recent_rows = 0

    def _recent_after(self, seq: int, limit: int) -> list[Record]:
        """The cached group that starts right after ``seq``; older groups are let go."""
        recent = self._recent
        while recent and recent[0][-1].seq <= seq:
            self._recent_rows -= len(recent.popleft())
        if recent and recent[0][0].seq == seq + 1 and len(recent[0]) <= limit:
            group = recent.popleft()
            self._recent_rows -= len(group)
            return group
        return []

    def stats(self) -> dict[str, object]:
        db = self._db()
        kinds = dict(db.execute("SELECT kind, COUNT(*) FROM spool GROUP BY kind").fetchall())
        first_last = db.execute("SELECT MIN(seq), MAX(seq) FROM spool").fetchone()
        return {
            "path": str(self.path),
            "rows": self._rows,
            "bytes": self._bytes,
            "max_bytes": self.max_bytes,
            "oldest_age_s": round(self.oldest_age_s(), 3),
            "by_kind": kinds,
            "first_seq": first_last[0],
            "last_seq": first_last[1],
            "policy": self.policy,
        }

    def close(self) -> None:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


def _chunks(items: list[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
