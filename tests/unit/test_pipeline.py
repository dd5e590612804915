"""The agent's pipeline: every input gets an outcome, bad input a dead-letter with a reason."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.jsonguard import INVALID_JSON, NOT_AN_OBJECT, TOO_DEEP, TOO_LARGE, nesting_depth
from agent.pipeline import (
    BAD_TOPIC,
    NO_MODEL,
    TOPIC_CACHE_MAX,
    Inbound,
    Limits,
    Pipeline,
    StreamModel,
)
from models.bundle import load_bundle, load_trusted_keys
from models.features import MISSING_FIELD, NON_FINITE, WRONG_TYPE
from plumbing.events import Topics

REPO = Path(__file__).resolve().parents[2]
BUNDLES = REPO / "models" / "bundles"
TOPIC = "edge/term-1/raw/payments"


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    trusted = load_trusted_keys(BUNDLES / "dev-signing-key.DEVELOPMENT-ONLY.pub.pem")
    bundle = load_bundle(BUNDLES / "payments-fraud.ewb", trusted)
    pipe = Pipeline(Topics(), Limits(max_payload_bytes=64 * 1024, max_json_depth=32))
    pipe.models["payments"] = StreamModel(bundle, max_devices=100)
    return pipe


def valid_payload(i: int = 0) -> dict[str, object]:
    payload: dict[str, object] = {f"V{k}": 0.01 * k for k in range(1, 29)}
    payload.update({"Amount": 12.5, "event_id": f"ok-{i}", "ts": 1700000000 + i})
    return payload


def run(pipeline: Pipeline, payloads: list[bytes], topic: str = TOPIC) -> list:
    return pipeline.process([Inbound(topic, p) for p in payloads])


def test_valid_payload_is_scored_with_contract_fields(pipeline: Pipeline) -> None:
    (outcome,) = run(pipeline, [json.dumps(valid_payload()).encode()])
    assert outcome.reason is None
    event = outcome.document
    assert event["event_id"] == "ok-0"
    assert event["device"] == "term-1"
    assert event["stream"] == "payments"
    assert event["ts"] == 1700000000
    assert event["model"]["name"] == "payments-fraud"
    assert event["anomaly"] == (event["score"] >= event["threshold"])
    assert len(event["contributions"]) == 3
    topics = [t for t, _ in outcome.publishes]
    assert topics[0] == "edge/term-1/scored/payments"
    assert ("edge/term-1/alerts/payments" in topics) == event["anomaly"]


def test_extreme_payment_raises_an_alert(pipeline: Pipeline) -> None:
    payload = valid_payload()
    payload.update({"V14": -19.0, "V12": -15.0, "V10": -20.0, "V4": 11.0})
    (outcome,) = run(pipeline, [json.dumps(payload).encode()])
    assert outcome.anomaly
    assert "V14" in outcome.document["contributions"] or "V10" in outcome.document["contributions"]


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


CASES = [
    (b"\xff\xfe\x00garbage", INVALID_JSON),
    (b"{not json", INVALID_JSON),
    (b"[1, 2, 3]", NOT_AN_OBJECT),
    (b'"just a string"', NOT_AN_OBJECT),
    (b"null", NOT_AN_OBJECT),
    (json.dumps({**valid_payload(), "V3": "12"}).encode(), WRONG_TYPE),
    (json.dumps({**valid_payload(), "V3": True}).encode(), WRONG_TYPE),
    (json.dumps({k: v for k, v in valid_payload().items() if k != "V7"}).encode(), MISSING_FIELD),
    (json.dumps({**valid_payload(), "V3": math.nan}).encode(), NON_FINITE),
    (json.dumps({**valid_payload(), "Amount": math.inf}).encode(), NON_FINITE),
    (b'{"V1": 1e999}', MISSING_FIELD),
    (b" " * (64 * 1024 + 1), TOO_LARGE),
    (b'{"pad": "' + b"x" * (1024 * 1024) + b'"}', TOO_LARGE),
    (nested(40), TOO_DEEP),
    (b"[" * 60_000, TOO_DEEP),
]


@pytest.mark.parametrize(("payload", "reason"), CASES, ids=[c[1] for c in CASES])
def test_bad_input_is_dead_lettered_with_reason(
    pipeline: Pipeline, payload: bytes, reason: str
) -> None:
    good = json.dumps(valid_payload(1)).encode()
    outcomes = run(pipeline, [good, payload, good])
    assert [o.reason for o in outcomes] == [None, reason, None]
    bad = outcomes[1]
    ((topic, body),) = bad.publishes
    assert topic == "edge/term-1/deadletter/payments"
    entry = json.loads(body)
    assert entry["reason"] == reason
    assert entry["source_topic"] == TOPIC
    assert entry["payload_bytes"] == len(payload)
    assert len(entry["payload_preview"]) <= 512


def test_no_model_and_bad_topic(pipeline: Pipeline) -> None:
    good = json.dumps(valid_payload()).encode()
    (no_model,) = run(pipeline, [good], topic="edge/term-1/raw/unknown-stream")
    assert no_model.reason == NO_MODEL
    (bad_topic,) = run(pipeline, [good], topic="edge/term-1/raw")
    assert bad_topic.reason == BAD_TOPIC


def test_nesting_depth_ignores_brackets_in_strings() -> None:
    assert nesting_depth(b'{"a": "[[[[{{{{", "b": [1, {"c": 2}]}') == 3


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=2048))
def test_random_bytes_never_break_the_pipeline(pipeline: Pipeline, blob: bytes) -> None:
    good = json.dumps(valid_payload()).encode()
    outcomes = run(pipeline, [good, blob, good])
    assert len(outcomes) == 3
    assert outcomes[0].reason is None
    assert outcomes[2].reason is None
    assert all(o.publishes for o in outcomes)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.dictionaries(st.sampled_from(["V1", "V2", "V14", "Amount", "x"]), json_values))
def test_arbitrary_json_fields_score_or_dead_letter(pipeline: Pipeline, changes: dict) -> None:
    payload = {**valid_payload(), **changes}
    body = json.dumps(payload).encode()
    (outcome,) = run(pipeline, [body])
    if outcome.reason is None:
        assert math.isfinite(outcome.document["score"])
    else:
        assert outcome.reason in {WRONG_TYPE, MISSING_FIELD, NON_FINITE}


def test_remembered_topics_stay_bounded(pipeline: Pipeline) -> None:
    body = json.dumps(valid_payload()).encode()
    devices = TOPIC_CACHE_MAX + 100
    outcomes = pipeline.process([Inbound(f"edge/d{i}/raw/payments", body) for i in range(devices)])
    assert [o.document["device"] for o in outcomes] == [f"d{i}" for i in range(devices)]
    assert len(pipeline._parsed_topics) <= TOPIC_CACHE_MAX


def test_the_native_and_the_python_reader_give_the_same_outcomes(pipeline: Pipeline) -> None:
    bundle = pipeline.models["payments"].bundle
    pipelines = []
    for native in (True, False):
        pipe = Pipeline(Topics(), Limits(max_payload_bytes=2048, max_json_depth=4))
        pipe.models["payments"] = StreamModel(bundle, max_devices=100, native_reader=native)
        pipe.shadows["payments"] = StreamModel(bundle, max_devices=100, native_reader=native)
        assert pipe.models["payments"].reader.native is native  # the native one is built
        pipelines.append(pipe)
    payloads = [json.dumps({**valid_payload(i), "V3": 0.5 * i - 7}).encode() for i in range(40)]
    payloads[3:9] = [
        json.dumps({**valid_payload(3), "V2": "x"}).encode(),  # wrong type
        json.dumps({**valid_payload(4), "Amount": None}).encode(),
        json.dumps(valid_payload(5))[:-1].encode(),  # invalid JSON
        json.dumps({**valid_payload(6), "V1": math.nan}).encode(),
        json.dumps({**valid_payload(7), "x": [[[[[1]]]]]}).encode(),  # too deep
        json.dumps({**valid_payload(8), "event_id": 8, "ts": {"at": 1}}).encode(),
    ]
    elsewhere = [Inbound("edge/term-2/raw/nothing", payloads[0]), Inbound("x", payloads[0])]
    inbound = [Inbound(TOPIC, p) for p in payloads] + elsewhere
    seen = []
    for pipe in pipelines:
        outcomes = pipe.process(inbound)
        documents = [{k: v for k, v in (o.document or {}).items()
                      if k not in {"scored_at", "rejected_at"}} for o in outcomes]  # fmt: skip
        seen.append([(o.event_id, o.reason, [t for t, _ in o.publishes], json.dumps(d))
                     for o, d in zip(outcomes, documents, strict=True)])  # fmt: skip
    assert seen[0] == seen[1]
    reasons = {reason for _, reason, _, _ in seen[0]}
    assert {
        WRONG_TYPE,
        MISSING_FIELD,
        INVALID_JSON,
        NON_FINITE,
        TOO_DEEP,
        NO_MODEL,
        BAD_TOPIC,
    } <= reasons
