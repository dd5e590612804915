"""The native payload reader reads every batch exactly as the Python path does.

These tests need the native reader built (``make native``, part of ``make setup``); they fail,
rather than skip, where it is not.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.jsonguard import INVALID_JSON, NOT_AN_OBJECT, TOO_DEEP, TOO_LARGE
from agent.reading import PayloadReader, ReadBatch
from models.features import FeatureSpec, FieldSpec

LIMITS = {"max_bytes": 600, "max_depth": 4}
NAMES = ["a", "b", "ts"]  # a feature may share its name with the event's own fields


def feature_spec() -> FeatureSpec:
    return FeatureSpec(fields=(
        FieldSpec(name="a", center=1.0, scale=2.0),
        FieldSpec(name="b", on_missing="impute", on_invalid="impute", impute_value=7.0),
        FieldSpec(name="ts", transform="log1p"),
    ))  # fmt: skip


def read_both(payloads: list[bytes]) -> tuple[ReadBatch, ReadBatch]:
    spec = feature_spec()
    native = PayloadReader(spec, native=True).read(payloads, **LIMITS)
    python = PayloadReader(spec, native=False).read(payloads, **LIMITS)
    return native, python


def same_value(x: Any, y: Any) -> bool:
    """Equal with the same type, NaN equal to NaN and -0.0 not equal to 0.0."""
    if type(x) is not type(y):
        return False
    if isinstance(x, float):
        same_sign = math.copysign(1, x) == math.copysign(1, y)
        return (math.isnan(x) and math.isnan(y)) or (x == y and same_sign)
    if isinstance(x, list):
        return len(x) == len(y) and all(map(same_value, x, y))
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(same_value(x[k], y[k]) for k in x)
    return bool(x == y)


def assert_same(native: ReadBatch, python: ReadBatch) -> None:
    assert native.rejections == python.rejections
    rejected = {r.index for r in python.rejections}
    for i in range(len(python.raw)):
        if i not in rejected:  # a rejected row holds junk on both paths
            assert native.raw[i].tobytes() == python.raw[i].tobytes(), i
    assert all(map(same_value, native.event_ids, python.event_ids)), native.event_ids
    assert all(map(same_value, native.ts, python.ts)), native.ts


EDGE_CASES = [
    b'{"a": 1, "b": 2.5, "ts": 3, "event_id": "e-1"}',
    b'  {"ts": 1e2, "b": -1, "a": 0.1}\n',  # any order, whitespace around
    b'{"a": -0, "b": -0.0, "ts": 0}',  # -0 is the int 0 in Python, -0.0 a float
    b'{"a": 12345678901234567890123, "b": 1, "ts": 1}',  # beyond 64 bits
    b'{"a": 1e400, "b": 1, "ts": 1}',  # beyond float range
    b'{"a": NaN, "b": 1, "ts": Infinity}',
    b'{"a": 9007199254740993, "b": 1, "ts": 1}',  # rounds to a float
    b'{"a": 1.00000000000000011102230246251565404, "b": 1, "ts": 1}',  # a rounding tie
    b'{"a": "1", "b": 1, "ts": 1}',
    b'{"a": true, "b": 1, "ts": 1}',
    b'{"a": 1, "b": "x", "ts": 1}',  # imputed
    b'{"a": 1, "ts": 1}',  # b imputed
    b'{"b": 1, "ts": 1}',  # a missing
    b'{"a": null, "b": null, "ts": 1}',
    b'{"a": "x", "a": 2, "b": 1, "ts": 1}',  # the last duplicate wins
    b'{"a": 2, "a": [1], "b": 1, "ts": 1}',
    b'{"a": 1, "b": 1, "ts": 1, "event_id": 5}',
    b'{"a": 1, "b": 1, "ts": 1, "event_id": "e\\u0000x"}',
    b'{"a": 1, "b": 1, "ts": 1, "event_id": "\\ud800"}',  # a lone surrogate
    b'{"a": 1, "b": 1, "ts": 1, "event_id": ""}',
    b'{"\\u0061": 4, "b": 1, "ts": 1}',  # an escaped key
    b'{"a": 1, "b": 1, "ts": 1, "x": {"y": [1, {"z": 2}]}}',
    b'{"a": 1, "b": 1, "ts": 1, "x": [[[[[1]]]]]}',  # too deep
    b'{"a": 1, "b": 1, "ts": 1, "x": "[[[[[["}',  # brackets in a string
    b'{"a": 1, "b": 1, "ts": 1} trailing',
    b'{"a": 1, "b": 1, "ts": 1',
    b"[1, 2]",
    b'"text"',
    b"",
    b"\xff\xfe{",
    '{"a": 1, "b": 1, "ts": 1}'.encode("utf-16"),
    b'{"a": 1, "b": 1, "ts": 1, "pad": "' + b"x" * 600 + b'"}',  # too large
    b'{"a": 1, "b": 1, "ts": 1, "s": "caf\xc3\xa9"}',
    b'{"a": 1, "b": 1, "ts": 1, "s": "\xc3"}',  # broken UTF-8
    b'{"a": 1, "b": 1, "ts": 1, "s": "tab\there"}',  # a raw control character
    b'{"a": 1, "b": 1, "ts": 1, "s\n": 1}',
    b'{"a": 1, "b": 1, "ts": 1, "s": "\\q"}',  # an unknown escape
    b'{"a": 1, "b": 1, "ts": 1, "s": "\\ud800 \\udc00x"}',
]


def test_edge_cases_read_the_same_natively_and_in_python() -> None:
    native, python = read_both(EDGE_CASES)
    assert_same(native, python)
    reasons = {r.reason for r in python.rejections}
    assert {INVALID_JSON, NOT_AN_OBJECT, TOO_DEEP, TOO_LARGE} <= reasons  # the cases cover them
    assert len(python.rejections) < len(EDGE_CASES) - 10  # and many are read


scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63 - 5, max_value=2**70)
    | st.floats(allow_nan=True) | st.sampled_from([0.0, -0.0, 1e308, 5e-324]) | st.text(max_size=6)
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=8,
)
numbers = (
    st.integers() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([-0.0, 2**64, 1e-320])
)  # fmt: skip
# A readable payload, often with some of its fields changed to anything.
payloads = st.builds(
    lambda base, changes: {**base, **changes},
    st.fixed_dictionaries(
        dict.fromkeys(NAMES, numbers), optional={"event_id": st.text(max_size=6), "x": values}
    ),
    st.just({}) | st.dictionaries(st.sampled_from([*NAMES, "event_id", "x", "é"]), values,
                                  max_size=3),
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(payloads, min_size=1, max_size=6), st.data())
def test_arbitrary_payloads_read_the_same_natively_and_in_python(
    documents: list[dict[str, Any]], data: st.DataObject
) -> None:
    encoded = []
    for document in documents:
        body = json.dumps(document, ensure_ascii=data.draw(st.booleans())).encode()
        if data.draw(st.booleans()) and len(body) > 2:  # a duplicate key, or a cut
            cut = data.draw(st.integers(1, len(body) - 1))
            body = data.draw(st.sampled_from([
                body[:-1] + b', "a": ' + json.dumps(data.draw(values)).encode() + b"}",
                body[:cut],
            ]))  # fmt: skip
        encoded.append(body)
    assert_same(*read_both(encoded))


def test_readable_payloads_are_read_natively_and_alike() -> None:
    from agent import _rows  # type: ignore[attr-defined]

    payloads = [json.dumps({"a": i, "b": -i / 3, "ts": i * 1e3}).encode() for i in range(50)]
    payloads.append(b'{"a": "x", "b": 1, "ts": 1}')  # this one is left to Python
    *_, unread = _rows.RowReader(NAMES, 600, 4).read(payloads)
    assert unread == [50]
    native, python = read_both(payloads)
    assert_same(native, python)
    np.testing.assert_array_equal(native.raw[:50, 1], -np.arange(50) / 3)
    assert [r.index for r in native.rejections] == [50]


def test_the_native_reader_refuses_an_empty_feature_list() -> None:
    from agent import _rows  # type: ignore[attr-defined]

    with pytest.raises(ValueError, match="no feature names"):
        _rows.RowReader([], 10, 1)
