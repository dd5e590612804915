"""Reading the data sets: the credit-card CSV, SKAB files, or any CSV with named columns.

Standard library and numpy only, so the agent's replay tool can use it without the
``train`` extra. Rows keep their source order.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from plumbing.errors import EdgewatchError

CREDITCARD_FEATURES = [f"V{i}" for i in range(1, 29)] + ["Amount"]
SKAB_FEATURES = [
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
]
LABEL_COLUMNS = ("Class", "anomaly", "label", "is_anomaly")
# Columns that only mean something inside one file, never model inputs.
NOT_FEATURES = {"Time", "datetime", "timestamp", "changepoint", "event_id", "device"}


class DatasetError(EdgewatchError):
    """A data file that cannot be read as a table of the expected columns."""


@dataclass
class Table:
    """Named columns of one file; numeric columns as float64, others as strings."""

    path: Path
    columns: list[str]
    numeric: dict[str, npt.NDArray[np.float64]]
    text: dict[str, list[str]]

    def __len__(self) -> int:
        first = self.columns[0]
        return len(self.numeric[first]) if first in self.numeric else len(self.text[first])

    def matrix(self, names: list[str]) -> npt.NDArray[np.float64]:
        missing = [n for n in names if n not in self.numeric]
        if missing:
            raise DatasetError(f"{self.path}: columns {missing} are absent or not numeric")
        return np.column_stack([self.numeric[n] for n in names])

    def label_column(self, preferred: str | None = None) -> str | None:
        candidates = [preferred] if preferred else list(LABEL_COLUMNS)
        return next((c for c in candidates if c in self.numeric), None)

    def labels(self, preferred: str | None = None) -> npt.NDArray[np.int8] | None:
        column = self.label_column(preferred)
        return None if column is None else (self.numeric[column] > 0.5).astype(np.int8)

    def feature_columns(self, label: str | None = None) -> list[str]:
        skip = NOT_FEATURES | {label or "", *LABEL_COLUMNS}
        return [c for c in self.columns if c in self.numeric and c not in skip]

    def payloads(self, names: list[str]) -> list[dict[str, Any]]:
        """Rows as device payloads of the given fields (labels are not included)."""
        columns = [self.numeric[n].tolist() for n in names]
        return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]


def read_table(path: Path) -> Table:
    """Read a CSV (',' or ';' separated, header row) into typed columns."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            header_line = handle.readline()
            delimiter = ";" if header_line.count(";") > header_line.count(",") else ","
            handle.seek(0)
            reader = csv.reader(handle, delimiter=delimiter)
            columns = [c.strip() for c in next(reader)]
            rows = [row for row in reader if row]
    except (OSError, UnicodeDecodeError, StopIteration, csv.Error) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    if any(len(row) != len(columns) for row in rows):
        raise DatasetError(f"{path}: rows do not all have {len(columns)} fields")
    numeric: dict[str, npt.NDArray[np.float64]] = {}
    text: dict[str, list[str]] = {}
    for j, name in enumerate(columns):
        values = [row[j] for row in rows]
        try:
            numeric[name] = np.array(values, dtype=np.float64)
        except ValueError:
            text[name] = values
    return Table(path, columns, numeric, text)


def write_rows(source: Path, rows: Iterable[int], out: Path) -> None:
    """Copy the header and the given data rows (0-based, in that order) of a CSV file."""
    lines = source.read_text(encoding="utf-8").splitlines()
    out.write_text("\n".join([lines[0], *(lines[i + 1] for i in rows)]) + "\n", encoding="utf-8")


def skab_files(root: Path) -> list[Path]:
    """The 30 SKAB test files (valve1/ and other/), in a stable order."""
    files = sorted(root.glob("valve1/*.csv"), key=lambda p: int(p.stem)) + sorted(
        root.glob("other/*.csv"), key=lambda p: int(p.stem)
    )
    if not files:
        raise DatasetError(f"no SKAB files under {root}/valve1 or {root}/other")
    return files
