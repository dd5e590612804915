"""Retraining's pure parts: the split is by time, never at random (no evaluation row is older
than a training row); features are raw payload fields; the champion is the newest valid bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.bundle import key_id
from models.timesplit import SplitError, time_split


def assert_ordered(times: np.ndarray, split: object) -> None:
    train, calibration, evaluation = (
        times[split.train], times[split.calibration], times[split.evaluation]  # type: ignore[attr-defined]
    )  # fmt: skip
    assert train.max() <= evaluation.min()
    assert train.max() <= calibration.min()
    assert calibration.max() <= evaluation.min()


def test_newest_rows_evaluate_and_oldest_train() -> None:
    rng = np.random.default_rng(3)
    times = rng.permutation(np.arange(1000, dtype=float))  # arrival order is not time order
    labels = np.zeros(1000, dtype=np.int8)
    labels[rng.choice(1000, 20, replace=False)] = 1
    split = time_split(times, labels)
    assert_ordered(times, split)
    # 60 / 20 / 20 by time; anomalies only ever in evaluation.
    assert sorted(times[split.evaluation]) == list(np.arange(800, 1000, dtype=float))
    assert not labels[split.train].any()
    assert not labels[split.calibration].any()
    assert labels[split.evaluation].sum() == labels[times >= 800].sum()
    assert split.evaluation_from == 800.0
    assert split.calibration_from == 600.0
    assert split.dropped_anomalies == labels[times < 800].sum()


def test_a_random_split_would_fail_the_same_check() -> None:
    """The check above is not vacuous: a shuffled split puts old rows in evaluation."""
    rng = np.random.default_rng(0)
    times = np.arange(1000, dtype=float)
    order = rng.permutation(1000)
    assert times[order[:600]].max() > times[order[800:]].min()


def test_equal_times_never_straddle_a_cut() -> None:
    times = np.repeat(np.arange(10, dtype=float), 10)  # ten rows per second
    split = time_split(times, np.zeros(100, dtype=np.int8), evaluation_fraction=0.25)
    assert_ordered(times, split)
    assert len(set(times[split.train]) & set(times[split.evaluation])) == 0


@given(
    times=st.lists(st.integers(0, 50), min_size=60, max_size=300),
    evaluation=st.floats(0.05, 0.4),
    calibration=st.floats(0.05, 0.4),
)
@settings(max_examples=200, deadline=None)
def test_no_evaluation_row_is_older_than_any_training_row(
    times: list[int], evaluation: float, calibration: float
) -> None:
    t = np.array(times, dtype=float)
    labels = (np.arange(len(t)) % 17 == 0).astype(np.int8)
    try:
        split = time_split(t, labels, evaluation_fraction=evaluation,
                           calibration_fraction=calibration, min_train_rows=1)  # fmt: skip
    except SplitError:
        return  # too few distinct times for three parts: refused, never mixed
    assert_ordered(t, split)
    parts = [set(split.train), set(split.calibration), set(split.evaluation)]
    assert not parts[0] & parts[1]
    assert not parts[0] & parts[2]
    assert not parts[1] & parts[2]


def test_too_few_rows_is_a_clear_error() -> None:
    with pytest.raises(SplitError, match="training"):
        time_split(np.arange(12, dtype=float), np.zeros(12, dtype=np.int8))


def test_train_only_columns_are_refused_as_features() -> None:
    """The agent scores raw payloads: a model must not read columns only train topics carry."""
    from pydantic import ValidationError

    from models.retrain_settings import StreamRetrainSettings

    with pytest.raises(ValidationError, match="hour_of_day"):
        StreamRetrainSettings(model="m", features=["V1", "hour_of_day"])
    with pytest.raises(ValidationError, match="log_amount"):
        StreamRetrainSettings(model="m", features=["log_amount"])
    ok = StreamRetrainSettings(model="m", features=["V1", "Amount"], log1p=["Amount"])
    assert ok.features == ["V1", "Amount"]


def test_the_champion_is_the_highest_valid_version_of_its_name(tmp_path: Path) -> None:
    from models.bundle import load_private_key, load_public_key, sign_bundle
    from models.champion import newest_valid
    from models.kafka_read import Record
    from tests.helpers import make_keys, make_manifest

    private, public = make_keys(tmp_path / "trusted")
    rogue, _ = make_keys(tmp_path / "rogue")
    trusted_key = load_public_key(public)
    trusted = {key_id(trusted_key): trusted_key}

    def record(offset: int, name: str, version: int, key: Path = private) -> Record:
        manifest = make_manifest(b"model", name=name, version=version)
        data = sign_bundle(manifest, b"model", load_private_key(key))
        return Record(name.encode(), data, 0, 0, offset)

    records = [
        record(0, "payments-fraud", 1),
        record(1, "payments-fraud", 3),
        record(2, "payments-fraud", 2),  # an older version published later
        record(3, "payments-fraud", 9, key=rogue),  # not signed by a trusted key
        record(4, "sensors-skab", 7),  # another model
        Record(b"payments-fraud", None, 0, 0, 5),  # a tombstone
    ]
    champion, problems = newest_valid(records, "payments-fraud", trusted, "edge.models")
    assert champion is not None
    assert champion.bundle.manifest.version == 3
    assert champion.source == "edge.models@0:1"
    assert len(problems) == 1
    assert "edge.models@0:3" in problems[0]
    assert newest_valid([], "payments-fraud", trusted, "edge.models") == (None, [])
