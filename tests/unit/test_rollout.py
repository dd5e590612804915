"""The rollout state machine (no I/O), cohorts, rollout manifest fields and signed instructions."""

from __future__ import annotations

import base64
import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest

from agent.rollout import Phase, Reservoir, Rollout, Rules, ShadowFigures, Version, spearman
from agent.service import AgentService
from models.bundle import (
    Bundle,
    Cohort,
    Manifest,
    RolloutRules,
    RolloutSpec,
    load_private_key,
    node_bucket,
    read_unverified,
)
from models.instructions import (
    InstructionError,
    instruction_key,
    new_instruction,
    sign_instruction,
    verify_instruction,
)
from tests.helpers import make_keys, make_manifest

V1, V2, V3 = Version(1, "a" * 64), Version(2, "b" * 64), Version(3, "c" * 64)
RULES = Rules(
    shadow_events=1000, shadow_s=10, probation_events=2000, probation_s=0, check_events=500
)


def batch(
    rng: np.random.Generator,
    n: int = 100,
    *,
    serving_rate: float = 0.02,
    shadow_rate: float | None = None,
    noise: float = 0.0,
    errors: int = 0,
    shadow_s: float = 0.001,
) -> ShadowFigures:
    """n events; the shadow model's scores are the serving ones plus noise."""
    serving = rng.exponential(1.0, n)
    shadow = serving + rng.normal(0, noise, n) if noise else serving.copy()
    rate = serving_rate if shadow_rate is None else shadow_rate
    return ShadowFigures(
        events=n,
        serving_alerts=round(n * serving_rate),
        shadow_alerts=round(n * rate),
        shadow_errors=errors,
        serving_s=0.001,
        shadow_s=shadow_s,
        serving_scores=serving,
        shadow_scores=shadow,
    )


def run(
    rollout: Rollout,
    rng: np.random.Generator,
    batches: int,
    start: float,
    step: float,
    **kwargs: object,
) -> list:
    decisions = []
    for i in range(batches):
        decision = rollout.observe(batch(rng, **kwargs), start + i * step)  # type: ignore[arg-type]
        if decision is not None:
            decisions.append(decision)
    return decisions


def shadowing(rules: Rules = RULES) -> Rollout:
    rollout = Rollout(rules, active=V1)
    assert rollout.offer(V2, now=0.0).kind == "shadow_started"
    assert rollout.phase is Phase.SHADOW
    return rollout


def test_first_bundle_is_installed_without_shadow() -> None:
    rollout = Rollout(RULES)
    decision = rollout.offer(V1, now=0.0)
    assert (decision.kind, rollout.active, rollout.phase) == ("installed", V1, Phase.SERVING)


def test_good_candidate_is_promoted_only_after_events_and_seconds() -> None:
    rollout, rng = shadowing(), np.random.default_rng(1)
    # 20 batches of 100 within 1.9 s: events reached, seconds not.
    assert run(rollout, rng, 20, start=0.0, step=0.1) == []
    (decision,) = run(rollout, rng, 1, start=10.0, step=0)
    assert decision.kind == "promoted"
    assert (decision.from_version, decision.to_version) == (V1, V2)
    assert decision.figures["rank_correlation"] == 1.0
    assert decision.figures["events"] == 2100
    assert (rollout.active, rollout.phase, rollout.previous) == (V2, Phase.PROBATION, [V1])
    assert rollout.shadow_candidate is None
    assert rollout.beside == V1  # the reference scores beside it on probation


def test_alert_rate_far_above_is_rejected_and_never_tried_again() -> None:
    rollout, rng = shadowing(), np.random.default_rng(2)
    (decision,) = run(rollout, rng, 11, start=0.0, step=1.0, serving_rate=0.02, shadow_rate=0.5)
    assert decision.kind == "rejected"
    assert "alert rate 0.5000 outside" in decision.reason
    assert decision.figures["new_alert_rate"] == 0.5
    assert (rollout.active, rollout.phase, rollout.candidate) == (V1, Phase.SERVING, None)
    again = rollout.offer(V2, now=20.0)
    assert again.kind == "ignored"
    assert "rejected" in again.reason


def test_alert_rate_band_has_a_floor_and_slack() -> None:
    rollout, rng = shadowing(), np.random.default_rng(3)
    # 0.03 vs 0.02: within 2x (+0.01); silence (0.0 vs 0.05) is outside 0.5x - 0.01.
    (ok,) = run(rollout, rng, 11, start=0.0, step=1.0, serving_rate=0.02, shadow_rate=0.03)
    assert ok.kind == "promoted"
    rollout, rng = shadowing(), np.random.default_rng(3)
    (silent,) = run(rollout, rng, 11, start=0.0, step=1.0, serving_rate=0.05, shadow_rate=0.0)
    assert silent.kind == "rejected"


def test_an_error_rejects_at_once() -> None:
    rollout, rng = shadowing(), np.random.default_rng(4)
    (decision,) = run(rollout, rng, 1, start=0.0, step=1.0, errors=3)
    assert decision.kind == "rejected"
    assert decision.reason.startswith("3 errors")


def test_disagreeing_ranks_and_slow_batches_are_rejected() -> None:
    rollout, rng = shadowing(), np.random.default_rng(5)
    (decision,) = run(rollout, rng, 11, start=0.0, step=1.0, noise=5.0)
    assert decision.kind == "rejected"
    assert "rank correlation" in decision.reason
    assert decision.figures["rank_correlation"] < 0.8
    rollout, rng = shadowing(), np.random.default_rng(5)
    (decision,) = run(rollout, rng, 11, start=0.0, step=1.0, shadow_s=0.2)
    assert decision.kind == "rejected"
    assert "p95 batch time 200.00 ms over 50.0 ms and 3.0x the current 1.00 ms" in decision.reason


def test_bundle_overrides_the_box_rules() -> None:
    rollout = Rollout(RULES, active=V1)
    rollout.offer(V2, now=0.0, overrides={"shadow_events": 100, "shadow_s": 0, "max_errors": None})
    (decision,) = run(rollout, np.random.default_rng(6), 1, start=0.0, step=0)
    assert decision.kind == "promoted"


def _promoted(rules: Rules = RULES) -> tuple[Rollout, np.random.Generator]:
    rollout, rng = shadowing(rules), np.random.default_rng(7)
    (decision,) = run(rollout, rng, 11, start=0.0, step=1.0)
    assert decision.kind == "promoted"
    return rollout, rng


def test_promoted_model_that_turns_bad_is_rolled_back_and_not_tried_again() -> None:
    rollout, rng = _promoted()
    assert run(rollout, rng, 5, start=20.0, step=1.0) == []  # one good check
    # Inputs drift: the promoted model (serving) alerts on 40 %, the reference on 8 %.
    (decision,) = run(rollout, rng, 5, start=30.0, step=1.0, serving_rate=0.4, shadow_rate=0.08)
    assert decision.kind == "rolled_back"
    assert (decision.from_version, decision.to_version) == (V2, V1)
    assert decision.reason.startswith("on probation: alert rate 0.4000 outside")
    assert decision.figures["old_alert_rate"] == 0.08
    assert (rollout.active, rollout.phase, rollout.previous) == (V1, Phase.SERVING, [])
    assert rollout.offer(V2, now=50.0).reason == "v2 was rolled back; not tried again"
    assert rollout.offer(V3, now=50.0).kind == "shadow_started"


def test_probation_passes_and_offers_meanwhile_are_deferred() -> None:
    rollout, rng = _promoted()
    assert rollout.offer(V3, now=15.0).kind == "deferred"
    decisions = run(rollout, rng, 20, start=20.0, step=1.0)
    assert [d.kind for d in decisions] == ["probation_passed"]
    assert (rollout.phase, rollout.candidate, rollout.previous) == (Phase.SERVING, None, [V1])
    assert rollout.offer(V3, now=50.0).kind == "shadow_started"


def test_no_probation_when_the_rules_set_none() -> None:
    rollout, _ = _promoted(
        Rules(shadow_events=1000, shadow_s=10, probation_events=0, probation_s=0)
    )
    assert (rollout.phase, rollout.candidate) == (Phase.SERVING, None)


def test_offers_that_are_not_newer_are_ignored_and_newer_candidates_replace() -> None:
    rollout = Rollout(RULES, active=V2)
    assert rollout.offer(V1, now=0).reason == "v1 is not newer than v2"
    assert rollout.offer(V2, now=0).quiet  # the retained bundle seen again
    rollout.offer(V3, now=0)
    assert rollout.offer(V3, now=1).quiet
    v4 = Version(4, "d" * 64)
    decision = rollout.offer(v4, now=2)
    assert decision.kind == "shadow_started"
    assert "replaces candidate v3" in decision.reason


def test_instruction_serves_an_older_version_and_retires_the_newer() -> None:
    rollout, _ = _promoted()
    rollout.offer(V3, now=15.0)  # deferred
    decision = rollout.instruct(V1, reason="fraud team")
    assert decision.kind == "rolled_back"
    assert decision.reason == "instruction from the centre: fraud team"
    assert (rollout.active, rollout.phase, rollout.candidate) == (V1, Phase.SERVING, None)
    assert rollout.offer(V2, now=21).kind == "ignored"
    assert rollout.instruct(V1).kind == "ignored"
    forward = rollout.instruct(V2)  # the centre may bring a rolled-back one back
    assert forward.kind == "instructed"
    assert (rollout.active, rollout.previous) == (V2, [V1])


def test_state_round_trips_the_versions() -> None:
    rollout, _ = _promoted()
    state = rollout.state()
    assert state["active"] == {"number": 2, "sha256": "b" * 64}
    assert state["probation"] is True
    again = Rollout(
        RULES, active=Version(**state["active"]), previous=[Version(**v) for v in state["previous"]]
    )
    again.resume_probation(now=0.0)
    assert (again.phase, again.beside) == (Phase.PROBATION, V1)


def test_spearman_and_the_reservoir() -> None:
    x = np.arange(10.0)
    assert spearman(x, x * 3 + 1) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(np.array([1.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 2.0, 3.0])) == 1.0
    assert spearman(x[:2], x[:2]) is None
    assert spearman(np.ones(5), x[:5]) == 0.0
    reservoir = Reservoir(100, 1, random.Random(0))
    for start in range(0, 100_000, 1000):
        reservoir.add(np.arange(start, start + 1000))
    sample = reservoir.sample()
    assert sample.shape == (100, 1)
    assert reservoir.seen == 100_000
    assert 30_000 < sample.mean() < 70_000  # uniform over everything seen, not the last rows


def test_cohort_by_list_and_by_stable_share() -> None:
    assert node_bucket("box-a") == node_bucket("box-a")
    nodes = [f"box-{i}" for i in range(2000)]
    ten = {n for n in nodes if Cohort(percent=10).includes(n)}
    fifty = {n for n in nodes if Cohort(percent=50).includes(n)}
    assert 150 < len(ten) < 250
    assert ten < fifty  # widening keeps the first boxes
    assert Cohort(nodes=("x",)).includes("x")
    assert not Cohort(nodes=("x",)).includes("y")
    with pytest.raises(ValueError, match="cohort needs"):
        Cohort()


def test_manifest_without_rollout_serializes_as_before() -> None:
    manifest = make_manifest(b"model")
    assert b"rollout" not in manifest.to_bytes()
    spec = RolloutSpec(cohort=Cohort(percent=25), rules=RolloutRules(shadow_events=10))
    with_rollout = manifest.model_copy(update={"rollout": spec})
    document = json.loads(with_rollout.to_bytes())
    assert document["rollout"] == {"cohort": {"percent": 25.0}, "rules": {"shadow_events": 10}}
    assert Manifest.model_validate_json(with_rollout.to_bytes()).rollout == spec


def test_instruction_signed_tampered_unsigned_untrusted(tmp_path: Path) -> None:
    private, public = make_keys(tmp_path / "k")
    from models.bundle import load_trusted_keys

    trusted = load_trusted_keys(public)
    signed = sign_instruction(new_instruction("pay", 3, reason="x"), load_private_key(private))
    assert verify_instruction(signed, trusted).version == 3
    assert instruction_key("pay") == "pay--serve"

    envelope = json.loads(signed)
    tampered = dict(envelope, payload=envelope["payload"].replace('"version": 3', '"version": 1'))
    unsigned = {k: v for k, v in envelope.items() if k not in ("signature", "key_id")}
    rogue_private, _ = make_keys(tmp_path / "rogue")
    rogue = sign_instruction(new_instruction("pay", 1), load_private_key(rogue_private))
    junk = dict(envelope, signature=base64.b64encode(b"x" * 64).decode())
    cases = [
        (json.dumps(tampered).encode(), "bad_signature"),
        (json.dumps(unsigned).encode(), "unsigned"),
        (rogue, "untrusted_key"),
        (json.dumps(junk).encode(), "bad_signature"),
        (b"not json", "malformed"),
        (b"{}", "malformed"),
    ]
    for data, reason in cases:
        with pytest.raises(InstructionError) as caught:
            verify_instruction(data, trusted)
        assert caught.value.reason == reason


def test_fleet_view_folds_statuses_and_transitions() -> None:
    from models.fleet import fleet_view, render

    status = {
        "service": "agent",
        "node": "box-a",
        "state": "online",
        "at": 100.0,
        "rollout": {
            "payments": {
                "model": "pay",
                "state": "probation",
                "active": 2,
                "candidate": None,
                "previous": [1],
                "last_transition": {"kind": "promoted", "at": 90.0, "reason": "passed every rule"},
            }
        },
    }
    promoted = {
        "node": "box-a",
        "stream": "payments",
        "model": "pay",
        "kind": "promoted",
        "from_version": 1,
        "to_version": 2,
        "reason": "passed every rule",
        "at": 90.0,
        "state": "probation",
        "active": 2,
        "candidate": None,
        "previous": [1],
        "figures": {
            "events": 300,
            "new_alert_rate": 0.04,
            "old_alert_rate": 0.039,
            "rank_correlation": 1.0,
            "p95_batch_ms": 0.4,
        },
    }
    rejected = {
        "node": "box-b",
        "stream": "payments",
        "model": "pay",
        "kind": "rejected",
        "from_version": 1,
        "to_version": 3,
        "reason": "alert rate 0.5 outside 0-0.09",
        "at": 95.0,
        "state": "serving",
        "active": 1,
        "candidate": None,
        "previous": [],
    }
    bridge = {"service": "bridge", "node": "box-b", "state": "online", "at": 120.0}
    boxes = fleet_view([(101.0, status), (121.0, bridge)], [(91.0, promoted), (96.0, rejected)])
    a, b = boxes
    assert (a.node, a.agent, a.last_seen) == ("box-a", "online", 101.0)
    stream = a.streams["payments"]
    assert (stream.active, stream.previous, stream.state) == (2, [1], "probation")
    assert stream.last is not None
    assert stream.last["figures"]["events"] == 300  # the record's figures, not the status copy
    assert (b.agent, b.last_seen, b.streams["payments"].active) == ("unknown", 121.0, 1)
    text = render(boxes, now=130.0)
    lines = text.splitlines()
    assert len(lines) == 3  # a header and one line per box
    assert "payments=pay v2/-/v1 probation; promoted v1->v2 00:01:30Z" in lines[1]
    assert "[300 events, alerts 0.04 vs 0.039, rank 1.0, p95 0.4 ms]" in lines[1]
    assert "payments=pay v1/-/- serving; rejected v1->v3" in lines[2]
    assert "online?" not in lines[1]
    assert "online?" in render(boxes, now=1000.0).splitlines()[1]  # not heard of: stale


def test_store_keeps_few_bundles_and_verifies_them_again(tmp_path: Path) -> None:
    from agent.store import ModelStore
    from models.bundle import load_trusted_keys, sign_bundle, verify_bundle

    private, public = make_keys(tmp_path / "k")
    key, trusted = load_private_key(private), load_trusted_keys(public)
    store = ModelStore(tmp_path / "state", keep=2, trusted=trusted)
    bundles = []
    for version in (1, 2, 3):
        data = sign_bundle(make_manifest(b"m", version=version), b"m", key)
        bundle = verify_bundle(data, trusted)
        store.put(bundle, data)
        bundles.append(bundle)
    named = [{"number": b.manifest.version, "sha256": b.sha256} for b in bundles]
    store.save_state("payments", "demo", {"active": named[2], "previous": [named[1]]})
    files = sorted(p.name for p in (tmp_path / "state" / "bundles").iterdir())
    assert len(files) == 2  # v1 is named by nothing any more: deleted
    assert store.get("demo", 1) is None
    found = store.get("demo", 3, bundles[2].sha256)
    assert found is not None
    assert found[0].manifest.version == 3
    assert ModelStore(tmp_path / "state", 2, trusted).load_state("payments")["active"] == named[2]
    # A file altered on disk is not loaded.
    path = tmp_path / "state" / "bundles" / ModelStore.file_name("demo", 2, bundles[1].sha256)
    path.write_bytes(path.read_bytes().replace(b'"version": 2', b'"version": 9'))
    assert store.get("demo", 2) is None
    memory = ModelStore(None, keep=2, trusted=trusted)
    memory.put(bundles[0], sign_bundle(make_manifest(b"m", version=1), b"m", key))
    assert memory.get("demo", 1) is not None


def _payments(version: int, **changes: object) -> Bundle:
    """The shipped payments model as ``version``, re-signed with the development key."""
    from models.bundle import load_trusted_keys, read_unverified, sign_bundle, verify_bundle

    repo = Path(__file__).resolve().parents[2]
    manifest, model, _ = read_unverified((repo / "models/bundles/payments-fraud.ewb").read_bytes())
    private = repo / "deploy/dev/keys/dev-signing-key.DEVELOPMENT-ONLY.pem"
    data = sign_bundle(
        manifest.model_copy(update={"version": version, **changes}),
        model,
        load_private_key(private),
    )
    return verify_bundle(data, load_trusted_keys(repo / "models/bundles"))


def test_pipeline_scores_the_same_batch_with_the_shadow_model() -> None:
    from agent.pipeline import Inbound, Limits, Pipeline, StreamModel
    from agent.replay import messages_from_file
    from plumbing.events import Topics

    repo = Path(__file__).resolve().parents[2]
    serving = _payments(1)
    low = serving.manifest.score.model_copy(update={"threshold": 0.33})
    topics = Topics()
    pipeline = Pipeline(topics, Limits())
    pipeline.models["payments"] = StreamModel(serving, 100)
    pipeline.shadows["payments"] = StreamModel(_payments(2, score=low), 100)
    messages = messages_from_file(repo / "models/samples/payments-holdout.csv", devices=2)[:200]
    batch = [Inbound(topics.event(m.device, "raw", "payments"), m.payload) for m in messages]
    outcomes = pipeline.process(batch)
    events = [o.document for o in outcomes if o.document is not None]
    assert all(e["shadow"]["model"]["version"] == 2 for e in events)
    assert all(e["model"]["version"] == 1 for e in events)
    assert all(e["shadow"]["score"] == e["score"] for e in events)  # same weights, same input
    figures = pipeline.shadow_figures["payments"]
    assert figures.events == 200
    assert figures.serving_alerts == sum(e["anomaly"] for e in events)
    assert figures.shadow_alerts == sum(e["shadow"]["anomaly"] for e in events) > 50
    assert figures.shadow_errors == 0
    # Only the serving model's alerts are published.
    alerts = [t for o in outcomes for t, _ in o.publishes if "/alerts/" in t]
    assert len(alerts) == figures.serving_alerts

    class Broken:
        def score(self, _inputs: object) -> None:
            raise RuntimeError("candidate broke")

    pipeline.shadows["payments"].scorer = Broken()  # type: ignore[assignment]
    outcomes = pipeline.process(batch[:10])
    assert len(outcomes) == 10
    assert all("shadow" not in o.document for o in outcomes if o.document)
    assert pipeline.shadow_figures["payments"].shadow_errors == 10


def test_agent_rollout_command_shows_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli import main
    from agent.store import ModelStore
    from models.bundle import load_trusted_keys, sign_bundle

    repo = Path(__file__).resolve().parents[2]
    keys = repo / "models/bundles"
    bundle = _payments(2)
    manifest, model, _ = read_unverified((repo / "models/bundles/payments-fraud.ewb").read_bytes())
    data = sign_bundle(
        manifest.model_copy(update={"version": 2}),
        model,
        load_private_key(repo / "deploy/dev/keys/dev-signing-key.DEVELOPMENT-ONLY.pem"),
    )
    store = ModelStore(tmp_path / "state", 4, load_trusted_keys(keys))
    store.put(bundle, data)
    active = {"number": 2, "sha256": bundle.sha256}
    old = {"number": 1, "sha256": "0" * 64}  # named, but its file is gone: not verified
    store.save_state(
        "payments",
        "payments-fraud",
        {
            "model": "payments-fraud",
            "active": active,
            "previous": [old],
            "rolled_back": [3],
            "rejected": [],
            "probation": False,
        },
    )
    config = tmp_path / "agent.toml"
    config.write_text(
        f'trusted_keys = "{keys}"\n[rollout]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[streams.payments]\nmodel = "payments-fraud"\n'
    )
    assert main(["rollout", "--config", str(config)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["active"] == active
    assert shown["rolled_back"] == [3]
    assert shown["bundles"] == [{"version": 2, "verified": True}, {"version": 1, "verified": False}]


def _service(tmp_path: Path, bundle: Path | None = None) -> AgentService:
    """An agent service that is never started: its rollout shell, without brokers."""
    from agent.settings import AgentSettings

    repo = Path(__file__).resolve().parents[2]
    bundle = bundle or repo / "models/bundles/payments-fraud.ewb"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'node_id = "box-x"\ntrusted_keys = "{repo / "models/bundles"}"\n'
        f'[rollout]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[streams.payments]\nbundle = "{bundle}"\nmodel = "payments-fraud"\n'
    )
    return AgentService(AgentSettings.load(config))


def _signed(version: int, model: bytes | None = None, **changes: object) -> bytes:
    import hashlib

    from models.bundle import sign_bundle

    repo = Path(__file__).resolve().parents[2]
    manifest, shipped, _ = read_unverified(
        (repo / "models/bundles/payments-fraud.ewb").read_bytes()
    )
    model = shipped if model is None else model
    changed = manifest.model_copy(
        update={"version": version, "model_sha256": hashlib.sha256(model).hexdigest(), **changes}
    )
    key = load_private_key(repo / "deploy/dev/keys/dev-signing-key.DEVELOPMENT-ONLY.pem")
    return sign_bundle(changed, model, key)


def test_service_shell_rejects_what_does_not_load_and_skips_other_cohorts(tmp_path: Path) -> None:
    service = _service(tmp_path)
    entry = service.rollouts["payments"]
    assert entry.rollout.active is not None
    assert entry.rollout.active.number == 1
    service._consider("payments", _signed(2, model=b"not a tflite model"))
    assert entry.rollout.last is not None
    assert entry.rollout.last.kind == "rejected"
    assert entry.rollout.last.reason.startswith("does not load")
    assert "payments" not in service.pipeline.shadows
    assert service.pipeline.models["payments"].manifest.version == 1
    elsewhere = RolloutSpec(cohort=Cohort(nodes=("box-y",)))
    service._consider("payments", _signed(3, rollout=elsewhere))
    assert entry.rollout.candidate is None
    assert entry.last_transition is not None
    assert "cohort" in entry.last_transition["reason"]
    service._consider("payments", _signed(4))
    assert entry.rollout.shadow_candidate is not None
    assert service.pipeline.shadows["payments"].manifest.version == 4
    # Restarted on the same state directory: v1 serves, v2 stays rejected.
    again = _service(tmp_path).rollouts["payments"].rollout
    assert again.active is not None
    assert (again.active.number, again.rejected) == (1, {2})


def test_a_configured_rebuild_under_the_serving_version_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shipped = _service(tmp_path).rollouts["payments"].rollout.active  # stored as serving
    rebuilt = tmp_path / "payments-fraud-rebuilt.ewb"
    rebuilt.write_bytes(_signed(1, created_at="2026-12-01T00:00:00+00:00"))
    with caplog.at_level(logging.WARNING, logger="agent.service"):
        service = _service(tmp_path, bundle=rebuilt)
    assert service.rollouts["payments"].rollout.active == shipped
    assert service.pipeline.shadows == {}
    assert "is not newer than the v1 serving and differs from it" in caplog.text


def test_stage_command_resigns_a_bundle_for_a_cohort(tmp_path: Path) -> None:
    from models.cli import main

    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "staged.ewb"
    code = main(
        [
            "stage",
            str(repo / "models/bundles/payments-fraud.ewb"),
            "--out",
            str(out),
            "--key",
            str(repo / "deploy/dev/keys/dev-signing-key.DEVELOPMENT-ONLY.pem"),
            "--trusted-keys",
            str(repo / "models/bundles"),
            "--percent",
            "10",
            "--nodes",
            "box-a,box-b",
            "--rule",
            "shadow_events=5000",
            "--version",
            "7",
        ]
    )
    assert code == 0
    manifest, _, _ = read_unverified(out.read_bytes())
    assert manifest.version == 7
    assert manifest.rollout is not None
    assert manifest.rollout.cohort == Cohort(nodes=("box-a", "box-b"), percent=10)
    assert manifest.rollout.rules.shadow_events == 5000
    bad = main(
        [
            "stage",
            str(out),
            "--out",
            str(tmp_path / "x.ewb"),
            "--key",
            str(tmp_path),
            "--trusted-keys",
            str(repo / "models/bundles"),
            "--rule",
            "no_such_rule=1",
        ]
    )
    assert bad == 1


def test_service_shell_follows_instructions_in_order(tmp_path: Path) -> None:
    from models.instructions import ServeInstruction

    repo = Path(__file__).resolve().parents[2]
    key = load_private_key(repo / "deploy/dev/keys/dev-signing-key.DEVELOPMENT-ONLY.pem")
    service = _service(tmp_path)
    entry = service.rollouts["payments"]

    def instruct(version: int, at: float, model: str = "payments-fraud") -> None:
        order = ServeInstruction(model=model, version=version, issued_at=at)
        service._instruction("payments", sign_instruction(order, key))

    service._consider("payments", _signed(2))
    assert entry.rollout.phase is Phase.SHADOW
    instruct(1, at=100.0)  # serve v1: the candidate v2 is retired
    assert entry.rollout.last is not None
    assert (entry.rollout.phase, entry.rollout.rolled_back) == (Phase.SERVING, {2})
    assert "payments" not in service.pipeline.shadows
    service._consider("payments", _signed(2))  # the retained v2 again: not tried again
    assert entry.rollout.phase is Phase.SERVING
    instruct(2, at=200.0)  # the centre may bring it back; it is in memory no more, nor stored
    assert entry.last_transition is not None
    assert entry.last_transition["kind"] == "instruction_failed"
    instruct(1, at=150.0)
    assert entry.last_transition["kind"] == "instruction_refused"
    assert "older than the last instruction" in entry.last_transition["reason"]
    instruct(1, at=300.0, model="sensors-skab")
    assert "for model sensors-skab" in entry.last_transition["reason"]
    refused = service.metrics.instructions_refused
    assert refused.labels("stale")._value.get() == 1
    assert refused.labels("other_model")._value.get() == 1
