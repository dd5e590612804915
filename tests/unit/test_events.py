"""The one JSON codec of the wire: orjson's speed with the standard library's semantics."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plumbing.events import dumps, loads

CASES = [
    b'{"amount": 12.5, "event_id": "e1", "V1": -1.25e-7}',
    b'{"a": NaN, "b": Infinity, "c": -Infinity}',  # not JSON, but json.loads reads them
    b'{"x": "\\ud800"}',  # a lone surrogate escape
    '{"utf16": 1}'.encode("utf-16"),
    b'{"dup": 1, "dup": 2}',
    b"[1, 2, 3]",
]


@pytest.mark.parametrize("payload", CASES)
def test_loads_reads_what_json_loads_reads(payload: bytes) -> None:
    expected = json.loads(payload)
    got = loads(payload)
    assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)


@pytest.mark.parametrize("payload", [b"", b"{", b'{"a": }', b"\xff\xfe\x00", b"nul"])
def test_loads_refuses_what_json_loads_refuses(payload: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - json.JSONDecodeError or UnicodeDecodeError
        json.loads(payload)
    with pytest.raises(ValueError):  # noqa: PT011
        loads(payload)


def test_integers_beyond_64_bits_are_read_as_floats() -> None:
    assert loads(b'{"big": 123456789012345678901234567890}') == {"big": 1.2345678901234568e29}


def test_dumps_is_compact_json_with_non_finite_as_null() -> None:
    document = {"score": math.nan, "hi": math.inf, "n": [1, 2.5], "s": "é"}
    body = dumps(document)
    assert b" " not in body
    assert json.loads(body) == {"score": None, "hi": None, "n": [1, 2.5], "s": "é"}


def test_dumps_keeps_integers_beyond_64_bits() -> None:
    document = {"ts": 10**30, "bad": [math.nan]}
    assert json.loads(dumps(document)) == {"ts": 10**30, "bad": [None]}


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)


@given(st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
))  # fmt: skip
def test_round_trip_equals_the_standard_library(value: object) -> None:
    text = json.dumps({"v": value}).encode()
    assert loads(text) == json.loads(text)
    assert json.loads(dumps({"v": value})) == json.loads(text)
