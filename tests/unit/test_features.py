"""The feature spec turns payloads into model inputs the same way everywhere."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from models.features import (
    MISSING_FIELD,
    NON_FINITE,
    WRONG_TYPE,
    BaselineSpec,
    FeatureSpec,
    FieldSpec,
    WindowState,
    sliding_windows,
)


def spec(**overrides: object) -> FeatureSpec:
    fields = (
        FieldSpec(name="a", center=1.0, scale=2.0, **overrides),  # type: ignore[arg-type]
        FieldSpec(name="b", center=0.0, scale=1.0, clip=3.0),
    )
    return FeatureSpec(fields=fields)


def test_valid_payloads_are_scaled_and_clipped_in_order() -> None:
    x, rejected = spec().vectorize([{"a": 5, "b": 1.5, "extra": "ignored"}, {"b": -9.0, "a": 1}])
    assert rejected == []
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, [[2.0, 1.5], [0.0, -3.0]])


def test_missing_field_rejects_or_imputes() -> None:
    _, rejected = spec().vectorize([{"b": 1.0}, {"a": None, "b": 1.0}])
    assert [(r.index, r.reason) for r in rejected] == [(0, MISSING_FIELD), (1, MISSING_FIELD)]
    x, rejected = spec(on_missing="impute", impute_value=3.0).vectorize([{"b": 1.0}])
    assert rejected == []
    assert x[0, 0] == pytest.approx(1.0)  # (3 - 1) / 2


@pytest.mark.parametrize("value", ["12", True, False, [1], {"x": 1}])
def test_strings_booleans_and_containers_are_wrong_type(value: object) -> None:
    _, rejected = spec().vectorize([{"a": value, "b": 0.0}])
    assert [(r.index, r.reason) for r in rejected] == [(0, WRONG_TYPE)]
    assert "'a'" in rejected[0].detail


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400])
def test_non_finite_values_reject_with_field_name(value: object) -> None:
    x, rejected = spec().vectorize([{"a": 1.0, "b": 0.0}, {"a": value, "b": 0.0}])
    assert [(r.index, r.reason) for r in rejected] == [(1, NON_FINITE)]
    assert "'a'" in rejected[0].detail
    assert np.isfinite(x).all()


@pytest.mark.parametrize("bad", [{"b": 1.0}, {"a": "x", "b": 1.0}, {"a": 10**400, "b": 1.0}])
def test_one_bad_row_leaves_the_other_rows_of_its_batch_as_they_are(bad: object) -> None:
    x, rejected = spec().vectorize([{"a": 5, "b": 1.5}, bad, {"a": 3, "b": -1}])  # type: ignore[list-item]
    assert [r.index for r in rejected] == [1]
    np.testing.assert_allclose(x[[0, 2]], [[2.0, 1.5], [1.0, -1.0]])


@pytest.mark.filterwarnings("error")
def test_a_value_beyond_float32_is_clipped_without_a_warning() -> None:
    x, rejected = spec().vectorize([{"a": 1e300, "b": -1e300}])
    assert rejected == []
    assert x[0, 1] == -3.0
    assert x[0, 0] == np.inf  # no clip for "a": the scorer's quantization bounds it


def test_invalid_values_can_be_imputed() -> None:
    x, rejected = spec(on_invalid="impute", impute_value=5.0).vectorize(
        [{"a": math.nan, "b": 0.0}, {"a": "oops", "b": 0.0}]
    )
    assert rejected == []
    np.testing.assert_allclose(x[:, 0], [2.0, 2.0])


def test_log1p_transform_and_fit_round_trip() -> None:
    rng = np.random.default_rng(0)
    raw = np.column_stack([rng.normal(10, 2, 500), rng.exponential(100, 500)])
    fitted = FeatureSpec.fit(["t", "amount"], raw, log1p=("amount",))
    x, _ = fitted.transform(raw)
    assert abs(x.mean(axis=0)).max() < 1e-4
    np.testing.assert_allclose(x.std(axis=0), [1.0, 1.0], rtol=1e-3)
    payload_x, _ = fitted.vectorize([{"t": float(r[0]), "amount": float(r[1])} for r in raw])
    np.testing.assert_allclose(payload_x, x, rtol=1e-5)


def test_minmax_scaling() -> None:
    fitted = FeatureSpec.fit(["v"], [[2.0], [4.0], [6.0]], scaling="minmax")
    x, _ = fitted.transform([[2.0], [6.0]])
    np.testing.assert_allclose(x[:, 0], [0.0, 1.0])


def test_scale_floor_keeps_a_still_channel_from_magnifying_drift() -> None:
    rng = np.random.default_rng(1)
    still = 70.0 + rng.normal(0, 0.001, 400)  # a temperature that hardly moved
    lively = rng.normal(5.0, 2.0, 400)
    raw = np.column_stack([still, lively])
    plain = FeatureSpec.fit(["temp", "flow"], raw)
    floored = FeatureSpec.fit(["temp", "flow"], raw, scale_floor=0.01)
    assert floored.fields[0].scale == pytest.approx(0.7, rel=1e-4)  # 1 % of the level
    assert floored.fields[1].scale == plain.fields[1].scale  # std 2 is above 1 % of 5
    drifted = [[70.35, 5.0]]  # half a degree later in the day
    assert abs(plain.transform(drifted)[0][0, 0]) > 100
    assert abs(floored.transform(drifted)[0][0, 0]) == pytest.approx(0.5, abs=0.05)


def test_windows_stream_equals_batch_and_is_edge_padded() -> None:
    rows = np.arange(12, dtype=np.float32).reshape(6, 2)
    batch = sliding_windows(rows, 3)
    np.testing.assert_array_equal(batch[0], [0, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(batch[4], [4, 5, 6, 7, 8, 9])
    state = WindowState(window=3, width=2, max_devices=10)
    streamed = np.concatenate([state.push(["d"], rows[i : i + 1]) for i in range(6)])
    np.testing.assert_array_equal(streamed, batch)


def test_window_state_keeps_devices_apart_and_bounded() -> None:
    state = WindowState(window=2, width=1, max_devices=2)
    out = state.push(["a", "b", "a", "c", "b"], np.array([[1], [10], [2], [100], [20]], np.float32))
    np.testing.assert_array_equal(out[2], [1, 2])  # a's own history, not b's
    assert len(state) == 2
    assert state.evictions == 2  # c evicted b's... then b came back and evicted a
    np.testing.assert_array_equal(out[4], [20, 20])  # b was forgotten: starts afresh


def test_duplicate_field_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unique"):
        FeatureSpec(fields=(FieldSpec(name="a"), FieldSpec(name="a")))


def test_baseline_deviation_weight_is_a_share_and_off_by_default() -> None:
    assert BaselineSpec().deviation_weight == 0.0  # manifests written before it: model alone
    assert BaselineSpec(deviation_weight=1.0).deviation_weight == 1.0
    for bad in (-0.1, 1.5):
        with pytest.raises(ValidationError):
            BaselineSpec(deviation_weight=bad)
