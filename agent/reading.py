"""Raw payloads to a model's feature values, each payload's own ``event_id`` and its ``ts``.

A batch of payloads is read at once. The native reader (``agent._rows``, built from
``agent/native`` by ``make native``; optional) reads a payload straight into its row, without
a Python object per field and without holding the GIL. It reads only payloads it can read
exactly as Python does (a JSON object within the limits whose every feature is a number);
the others, and every payload when it is not built, go through :func:`parse_object` and
:meth:`FeatureSpec.extract`, which decide and word each rejection. Either way a batch reads
the same (the agent's ``native_reader = false`` keeps to Python).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.jsonguard import PayloadRejectedError, parse_object
from models.features import FeatureSpec, Rejection

try:
    from agent import _rows  # type: ignore[attr-defined]
except ImportError:  # not built here: the Python path reads everything
    _rows = None


def native_available() -> bool:
    """Whether the native reader is built (and loads on this machine)."""
    return _rows is not None


@dataclass(slots=True)
class ReadBatch:
    """What a batch of payloads holds for a model; rows follow the payloads' order."""

    raw: npt.NDArray[np.float64]  # N × width raw field values; a rejected row is junk
    event_ids: list[str | None]  # each payload's "event_id" when a string, else None
    ts: list[Any]  # each payload's "ts" value, None when absent or unread
    rejections: list[Rejection]  # by index: unparseable payloads and unusable fields


class PayloadReader:
    """Reads payloads for one feature spec, natively where it can (see the module doc)."""

    def __init__(self, spec: FeatureSpec, *, native: bool | None = None) -> None:
        """``native``: None uses the native reader where it is built; True requires it."""
        self.spec = spec
        self.native = native_available() if native is None else native
        if self.native and _rows is None:
            raise RuntimeError("the native reader is not built (make native)")
        self._readers: dict[tuple[int, int], Any] = {}

    def read(self, payloads: list[bytes], *, max_bytes: int, max_depth: int) -> ReadBatch:
        """The batch's rows, own ids and ts, with every payload that cannot be scored listed."""
        width = len(self.spec.names)
        if not self.native:
            batch = ReadBatch(np.empty((len(payloads), width)), [None] * len(payloads),
                              [None] * len(payloads), [])  # fmt: skip
            self._read_in_python(payloads, range(len(payloads)), batch, max_bytes, max_depth)
            return batch
        reader = self._readers.get((max_bytes, max_depth))
        if reader is None:
            reader = self._readers[max_bytes, max_depth] = _rows.RowReader(
                list(self.spec.names), max_bytes, max_depth
            )
        values, event_ids, ts, unread = reader.read(payloads)
        raw = np.frombuffer(values, dtype=np.float64).reshape(len(payloads), width)
        batch = ReadBatch(raw, event_ids, ts, [])
        if unread:
            self._read_in_python(payloads, unread, batch, max_bytes, max_depth)
        return batch

    def _read_in_python(
        self, payloads: list[bytes], indices: Sequence[int], batch: ReadBatch, max_bytes: int,
        max_depth: int,
    ) -> None:  # fmt: skip
        """Parse and extract the payloads at ``indices`` into ``batch``."""
        parsed: list[int] = []
        documents: list[dict[str, Any]] = []
        for i in indices:
            try:
                document = parse_object(payloads[i], max_bytes=max_bytes, max_depth=max_depth)
            except PayloadRejectedError as exc:
                batch.rejections.append(Rejection(i, exc.reason, exc.detail))
                continue
            own = document.get("event_id")
            batch.event_ids[i] = own if isinstance(own, str) else None
            batch.ts[i] = document.get("ts")
            parsed.append(i)
            documents.append(document)
        if documents:
            values, rejections = self.spec.extract(documents)
            if len(parsed) == len(batch.raw):
                batch.raw = values
            else:
                batch.raw[parsed] = values
            batch.rejections.extend(Rejection(parsed[r.index], r.reason, r.detail)
                                    for r in rejections)  # fmt: skip
        batch.rejections.sort(key=lambda r: r.index)
