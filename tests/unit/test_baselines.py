"""Per-device baselines: warm-up marking, the fitting rule, eviction, reset, persistence."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from agent.baselines import BaselineKeeper, BaselineStore, DeviceBaselines
from agent.metrics import AgentMetrics
from agent.pipeline import Inbound, Limits, Pipeline, StreamModel
from agent.settings import BaselineSettings
from models.bundle import (
    load_bundle,
    load_private_key,
    load_trusted_keys,
    read_unverified,
    sign_bundle,
)
from models.features import BaselineSpec, FeatureSpec, FloatMatrix
from plumbing.events import Topics
from tests.helpers import make_keys

REPO = Path(__file__).resolve().parents[2]
BUNDLES = REPO / "models" / "bundles"
DEV_KEY = BUNDLES / "dev-signing-key.DEVELOPMENT-ONLY.pub.pem"
NAMES = ["a", "b"]


def spec(window: int = 1) -> FeatureSpec:
    rng = np.random.default_rng(0)
    base = FeatureSpec.fit(NAMES, rng.normal(10, 2, size=(50, 2)), clip=10.0)
    return base.model_copy(update={"window": window})


def max_of_window(windows: FloatMatrix) -> np.ndarray:
    """A stand-in model: the score is the largest absolute input of the window."""
    return np.abs(windows).max(axis=1).astype(np.float32)


def baselines(max_devices: int = 10, window: int = 1, **changes: object) -> DeviceBaselines:
    rule = BaselineSpec(warmup_rows=5, scale_floor=0.01, quantile=1.0, margin=2.0)
    return DeviceBaselines(rule.model_copy(update=changes), spec(window), model_threshold=7.0,
                           max_devices=max_devices, identity={"model": "x"})  # fmt: skip


def rows(n: int, level: float = 100.0, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(level, 1.0, size=(n, 2))


def test_first_readings_are_warming_up_then_the_device_has_its_own_scaling() -> None:
    core = baselines()
    values = rows(8)
    prepared = core.prepare(["pump"] * 8, values, max_of_window)
    assert prepared.warming == [True] * 5 + [False] * 3
    assert prepared.thresholds[:5].tolist() == [7.0] * 5  # the model's until learned
    learned = core.baseline("pump")
    assert learned is not None
    # The same rule as FeatureSpec.fit (scale floor included).
    fitted = FeatureSpec.fit(NAMES, values[:5], scale_floor=0.01)
    assert learned.center.tolist() == [f.center for f in fitted.fields]
    assert learned.scale.tolist() == [f.scale for f in fitted.fields]
    expected = np.clip((values[5:] - learned.center) / learned.scale, -10, 10)
    np.testing.assert_allclose(prepared.rows[5:], expected.astype(np.float32))
    # Threshold: margin x quantile (here the max) of the warm-up scores, device-scaled.
    warm = np.clip((values[:5] - learned.center) / learned.scale, -10, 10).astype(np.float32)
    assert learned.threshold == pytest.approx(2.0 * float(np.abs(warm).max()))
    assert prepared.thresholds[5:].tolist() == [learned.threshold] * 3
    assert core.summary()["learned"] == 1
    assert core.learned == 1


def test_devices_warm_up_independently_within_one_batch() -> None:
    core = baselines()
    devices = ["a", "b"] * 6
    prepared = core.prepare(devices, rows(12), max_of_window)
    assert prepared.warming == [True] * 10 + [False] * 2
    assert [s[1] for s in prepared.seeds] == ["a", "b"]
    assert [s[0] for s in prepared.seeds] == [8, 9]


def test_threshold_model_keeps_the_manifest_threshold() -> None:
    core = baselines(threshold="model")
    prepared = core.prepare(["d"] * 6, rows(6), max_of_window)
    assert prepared.thresholds.tolist() == [7.0] * 6


def test_windowed_history_is_seeded_with_the_device_scaled_warm_up() -> None:
    core = baselines(window=3)
    values = rows(5)
    prepared = core.prepare(["d"] * 5, values, max_of_window)
    ((index, device, history),) = prepared.seeds
    learned = core.baseline("d")
    assert learned is not None
    assert (index, device) == (4, "d")
    expected = ((values - learned.center) / learned.scale).astype(np.float32)
    np.testing.assert_allclose(history, expected)


def test_devices_beyond_max_devices_are_evicted_and_counted() -> None:
    core = baselines(max_devices=2)
    for device in ("a", "b"):
        core.prepare([device] * 5, rows(5), max_of_window)
    core.changed = False
    core.prepare(["c"], rows(1), max_of_window)  # a is the least recently seen
    assert core.evictions == 1
    assert core.changed  # a learned baseline went: the store must be rewritten
    assert core.baseline("a") is None
    assert core.baseline("b") is not None
    assert len(core) == 2
    again = core.prepare(["a"], rows(1), max_of_window)
    assert again.warming == [True]  # a starts over
    assert core.evictions == 2


def test_reset_starts_a_new_warm_up() -> None:
    core = baselines()
    core.prepare(["d"] * 5, rows(5), max_of_window)
    assert core.reset("d")
    assert core.resets == 1
    assert not core.reset("unknown")
    later = core.prepare(["d"] * 5, rows(5, level=500.0), max_of_window)
    assert later.warming == [True] * 5
    learned = core.baseline("d")
    assert learned is not None
    assert learned.center[0] == pytest.approx(500.0, abs=2)


def test_document_round_trip_restores_identical_baselines(tmp_path: Path) -> None:
    core = baselines()
    core.prepare(["a"] * 5 + ["b"] * 5 + ["c"] * 2, rows(12), max_of_window)
    store = BaselineStore(tmp_path)
    store.save("sensors", core.to_document())
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file
    again = baselines()
    document = store.load("sensors")
    assert document is not None
    assert again.restore(document) is None
    for device in ("a", "b"):
        before, after = core.baseline(device), again.baseline(device)
        assert before is not None
        assert after is not None
        assert after.center.tolist() == before.center.tolist()
        assert after.threshold == before.threshold
    assert again.baseline("c") is None  # warming devices are not persisted
    probe = rows(3, seed=9)
    first = core.prepare(["a"] * 3, probe, max_of_window)
    second = again.prepare(["a"] * 3, probe, max_of_window)
    assert first.rows.tobytes() == second.rows.tobytes()
    assert first.thresholds.tolist() == second.thresholds.tolist()


def test_a_document_of_another_model_is_not_loaded(tmp_path: Path) -> None:
    core = baselines()
    core.prepare(["a"] * 5, rows(5), max_of_window)
    other = DeviceBaselines(core.spec, core.features, model_threshold=7.0, max_devices=10,
                            identity={"model": "y"})  # fmt: skip
    reason = other.restore(core.to_document())
    assert reason is not None
    assert "another model" in reason
    assert len(other) == 0
    (tmp_path / "sensors.json").write_text("{not json")
    assert BaselineStore(tmp_path).load("sensors") is None


def test_keeper_applies_reset_requests_and_saves_changes(tmp_path: Path) -> None:
    metrics = AgentMetrics()
    keeper = BaselineKeeper(BaselineSettings(state_dir=tmp_path, poll_s=0.01), metrics)
    core = baselines()
    keeper.attach("sensors", core)
    core.prepare(["a"] * 5 + ["b"] * 5, rows(10), max_of_window)
    assert keeper.tend(now=1.0)
    saved = json.loads((tmp_path / "sensors.json").read_text())
    assert set(saved["devices"]) == {"a", "b"}
    BaselineStore(tmp_path).request_reset("a", "sensors")
    BaselineStore(tmp_path).request_reset("b")  # every stream
    assert keeper.tend(now=2.0)
    assert json.loads((tmp_path / "sensors.json").read_text())["devices"] == {}
    assert not list((tmp_path / "requests").iterdir())
    sample = metrics.registry.get_sample_value
    assert sample("edgewatch_agent_baseline_resets_total", {"stream": "sensors"}) == 2
    assert sample("edgewatch_agent_baselines_learned_total", {"stream": "sensors"}) == 2
    assert (
        sample("edgewatch_agent_baseline_devices", {"stream": "sensors", "state": "learned"}) == 0
    )


# -- through the pipeline, with the real sensors model -------------------------------------------
@pytest.fixture(scope="module")
def sensors_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The shipped sensors model with a short warm-up (20 readings), signed by a test key."""
    keys = tmp_path_factory.mktemp("keys")
    private, public = make_keys(keys)
    manifest, model, _ = read_unverified((BUNDLES / "sensors-skab.ewb").read_bytes())
    rule = BaselineSpec(warmup_rows=30, scale_floor=0.01, quantile=0.99, margin=1.5)
    path = keys / "sensors-short.ewb"
    path.write_bytes(sign_bundle(manifest.model_copy(update={"baseline": rule}), model,
                                 load_private_key(private)))  # fmt: skip
    return path, public


def sensor_payloads(n: int, seed: int = 0, level: float = 1.0) -> list[bytes]:
    from models.datasets import SKAB_FEATURES

    rng = np.random.default_rng(seed)
    centers = np.array([0.2, 0.3, 1.5, 0.3, 70.0, 28.0, 230.0, 32.0]) * level
    out = []
    for i in range(n):
        values = centers * (1 + 0.01 * rng.normal(size=8))
        out.append(
            json.dumps(
                {
                    "event_id": f"r{seed}-{i}",
                    **dict(zip(SKAB_FEATURES, values.tolist(), strict=True)),
                }
            ).encode()
        )
    return out


def sensor_pipeline(bundle: tuple[Path, Path]) -> Pipeline:
    pipe = Pipeline(Topics(), Limits())
    pipe.models["sensors"] = StreamModel(load_bundle(bundle[0], load_trusted_keys(bundle[1])),
                                         max_devices=100)  # fmt: skip
    return pipe


def test_pipeline_marks_warm_up_events_and_never_alerts_during_it(
    sensors_bundle: tuple[Path, Path],
) -> None:
    pipe = sensor_pipeline(sensors_bundle)
    shocked = [json.loads(p) for p in sensor_payloads(40)]
    for document in shocked[10:15]:  # far off during warm-up: still no alert
        document["Current"] = 50.0
    batch = [Inbound("edge/pump-1/raw/sensors", json.dumps(d).encode()) for d in shocked]
    outcomes = []
    for start in range(0, 40, 7):  # warm-up ends inside a batch
        outcomes += pipe.process(batch[start : start + 7])
    events = [o.document for o in outcomes]
    assert all(e is not None for e in events)
    assert [e["warming_up"] for e in events] == [True] * 30 + [False] * 10  # type: ignore[index]
    assert not any(o.anomaly for o in outcomes[:30])
    assert all(len(o.publishes) == 1 for o in outcomes[:30])  # scored only, no alert topic
    learned = pipe.models["sensors"].baselines.baseline("pump-1")  # type: ignore[union-attr]
    assert learned is not None
    assert {e["threshold"] for e in events[30:]} == {learned.threshold}  # type: ignore[index]


def test_pipeline_after_warm_up_equals_the_offline_device_scaled_windows(
    sensors_bundle: tuple[Path, Path],
) -> None:
    from models.datasets import SKAB_FEATURES
    from models.features import sliding_windows

    pipe = sensor_pipeline(sensors_bundle)
    payloads = sensor_payloads(80, seed=3)
    outcomes = pipe.process([Inbound("edge/p/raw/sensors", p) for p in payloads])
    model = pipe.models["sensors"]
    spec, rule = model.manifest.features, model.manifest.baseline
    assert rule is not None
    raw = np.array([[json.loads(p)[n] for n in SKAB_FEATURES] for p in payloads])
    center, scale = rule.device_scaling(spec, raw[: rule.warmup_rows])
    windows = sliding_windows(spec.scale(raw, center, scale), spec.window)
    expected = np.round(model.scorer.score(windows).scores.astype(np.float64), 6)
    scores = [o.document["score"] for o in outcomes]  # type: ignore[index]
    assert scores[rule.warmup_rows :] == expected[rule.warmup_rows :].tolist()


def test_baselines_survive_a_restart_through_the_store(
    sensors_bundle: tuple[Path, Path], tmp_path: Path
) -> None:
    settings = BaselineSettings(state_dir=tmp_path, poll_s=0.01)
    first = sensor_pipeline(sensors_bundle)
    keeper = BaselineKeeper(settings, AgentMetrics())
    keeper.attach("sensors", first.models["sensors"].baselines)
    payloads = sensor_payloads(100, seed=5)
    before = first.process([Inbound("edge/p/raw/sensors", p) for p in payloads[:60]])
    keeper.save()
    # "Restart": a new pipeline and keeper on the same directory.
    second = sensor_pipeline(sensors_bundle)
    BaselineKeeper(settings, AgentMetrics()).attach("sensors", second.models["sensors"].baselines)
    after = second.process([Inbound("edge/p/raw/sensors", p) for p in payloads[60:]])
    assert not any(o.document["warming_up"] for o in after)  # type: ignore[index]
    assert after[0].document["threshold"] == before[-1].document["threshold"]  # type: ignore[index]
    # Once the window holds only readings after the restart, scores are those of no restart.
    same = first.process([Inbound("edge/p/raw/sensors", p) for p in payloads[60:]])
    window = first.models["sensors"].manifest.features.window
    assert (
        [o.document["score"] for o in after[window:]]
        == [  # type: ignore[index]
            o.document["score"]
            for o in same[window:]  # type: ignore[index]
        ]
    )


def test_payments_events_carry_no_baseline_fields() -> None:
    pipe = Pipeline(Topics(), Limits())
    bundle = load_bundle(BUNDLES / "payments-fraud.ewb", load_trusted_keys(DEV_KEY))
    pipe.models["payments"] = StreamModel(bundle, max_devices=10)
    assert pipe.models["payments"].baselines is None
    payload = {f"V{k}": 0.01 * k for k in range(1, 29)} | {"Amount": 3.0}
    (outcome,) = pipe.process([Inbound("edge/t/raw/payments", json.dumps(payload).encode())])
    assert outcome.document is not None
    assert "warming_up" not in outcome.document
    assert not math.isnan(outcome.document["score"])


# Digest of the payments events' scoring fields for models/samples/payments-holdout.csv (4
# terminals, batches of 64), computed with the pipeline before per-device baselines existed.
PAYMENTS_DIGEST = "58d18aaea28bcdc331212ebfb0e5bcaa09d0f05220b821d65b1502662039e77c"


def test_payments_scores_are_byte_identical_to_before_baselines() -> None:
    import hashlib

    from agent.replay import messages_from_file

    pipe = Pipeline(Topics(), Limits())
    bundle = load_bundle(BUNDLES / "payments-fraud.ewb", load_trusted_keys(DEV_KEY))
    pipe.models["payments"] = StreamModel(bundle, max_devices=100)
    messages = messages_from_file(REPO / "models" / "samples" / "payments-holdout.csv", devices=4)
    digest = hashlib.sha256()
    keys = ("event_id", "device", "score", "threshold", "anomaly", "contributions")
    for start in range(0, len(messages), 64):
        batch = [Inbound(f"edge/{m.device}/raw/payments", m.payload)
                 for m in messages[start : start + 64]]  # fmt: skip
        for outcome in pipe.process(batch):
            assert outcome.document is not None
            event = {k: outcome.document[k] for k in keys}
            digest.update(json.dumps(event, sort_keys=True).encode())
    assert len(messages) == 1038
    assert digest.hexdigest() == PAYMENTS_DIGEST
