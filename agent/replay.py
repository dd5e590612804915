"""Data sets as device messages: for replaying over MQTT and for offline scoring alike.

Each row becomes one payload of its feature columns plus an ``event_id`` (file and row),
so replayed and offline-scored events carry the same ids. Labels stay out of the payload
and are returned beside it, for scoring the results.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.datasets import LABEL_COLUMNS, read_table
from plumbing.events import dumps


@dataclass(frozen=True, slots=True)
class DeviceMessage:
    device: str
    payload: bytes
    event_id: str
    label: int | None


def messages_from_file(
    path: Path, devices: int = 1, device_prefix: str | None = None
) -> list[DeviceMessage]:
    """Rows of a CSV (credit card, SKAB, any) or JSONL file as device messages, in order.

    Rows go round-robin to ``devices`` devices; a SKAB file is one machine, so use 1.
    """
    prefix = device_prefix or _device_name(path)
    if path.suffix == ".jsonl":
        return _from_jsonl(path, devices, prefix)
    table = read_table(path)
    label_column = table.label_column()
    fields = [c for c in table.columns if c not in LABEL_COLUMNS and c != "changepoint"]
    labels = table.labels()
    columns: list[list[Any]] = [
        table.numeric[c].tolist() if c in table.numeric else table.text[c] for c in fields
    ]
    out = []
    for i, values in enumerate(zip(*columns, strict=True)):
        event_id = f"{prefix}-{i}"
        payload = {"event_id": event_id, **dict(zip(fields, values, strict=True))}
        device = prefix if devices == 1 else f"{prefix}-{i % devices}"
        label = int(labels[i]) if labels is not None and label_column else None
        out.append(DeviceMessage(device, dumps(payload), event_id, label))
    return out


def _from_jsonl(path: Path, devices: int, prefix: str) -> list[DeviceMessage]:
    out = []
    with path.open("rb") as handle:
        for i, raw_line in enumerate(handle):
            line = raw_line.strip()
            if not line:
                continue
            label = None
            try:
                document = json.loads(line)
                if isinstance(document, dict) and "label" in document:
                    label = int(document.pop("label"))
                    line = dumps(document)
                event_id = str(document.get("event_id", f"{prefix}-{i}"))
            except (ValueError, TypeError):
                event_id = f"{prefix}-{i}"  # kept as it is: the agent dead-letters it
            device = prefix if devices == 1 else f"{prefix}-{i % devices}"
            out.append(DeviceMessage(device, line, event_id, label))
    return out


def _device_name(path: Path) -> str:
    """'valve1/3.csv' -> 'valve1-3'; 'creditcard_head.csv' -> 'creditcard_head'."""
    return f"{path.parent.name}-{path.stem}" if path.stem.isdigit() else path.stem
