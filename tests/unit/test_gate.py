"""The champion/challenger gate: each rule, its figures, and the verdict (pure, no I/O)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from pydantic import ValidationError

from models.gate import GateRules, ModelFigures, apply_gate, figures, recall_at_alert_rate

RULES = GateRules()


def make(**changes: float) -> ModelFigures:
    base = ModelFigures(
        rows=2000,
        positives=13,
        roc_auc=0.99,
        pr_auc=0.80,
        threshold=5.0,
        alert_rate=0.015,
        normal_alert_rate=0.01,
        recall=0.9,
        precision=0.4,
        reference_alert_rate=0.015,
        recall_at_reference_rate=0.9,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def by_name(challenger: ModelFigures, champion: ModelFigures | None) -> dict[str, bool]:
    return {rule.name: rule.passed for rule in apply_gate(challenger, champion, RULES).rules}


def test_equal_models_pass_every_rule() -> None:
    verdict = apply_gate(make(), make(), RULES)
    assert verdict.passed
    assert [r.name for r in verdict.rules] == [
        "roc_auc", "pr_auc", "recall_at_champion_alert_rate", "normal_alert_rate"
    ]  # fmt: skip


@pytest.mark.parametrize("metric", ["roc_auc", "pr_auc"])
def test_auc_rules_allow_the_tolerance_and_no_more(metric: str) -> None:
    champion = make()
    inside = make(**{metric: getattr(champion, metric) - 0.0049})
    outside = make(**{metric: getattr(champion, metric) - 0.0051})
    assert by_name(inside, champion)[metric]
    verdict = apply_gate(outside, champion, RULES)
    assert not verdict.passed
    (failure,) = verdict.failures
    assert failure.name == metric
    # The message names the rule and both figures.
    assert f"{getattr(outside, metric):.4f}" in failure.detail
    assert f"{getattr(champion, metric):.4f}" in failure.detail
    assert failure.challenger == pytest.approx(getattr(outside, metric))
    assert failure.reference == pytest.approx(getattr(champion, metric))


def test_recall_at_the_champions_alert_rate_must_not_drop() -> None:
    champion = make(recall_at_reference_rate=0.9)
    assert not by_name(make(recall_at_reference_rate=0.8462), champion)[
        "recall_at_champion_alert_rate"
    ]
    assert by_name(make(recall_at_reference_rate=0.9), champion)["recall_at_champion_alert_rate"]
    assert by_name(make(recall_at_reference_rate=1.0), champion)["recall_at_champion_alert_rate"]


@pytest.mark.parametrize(("rate", "passed"), [(0.0, False), (0.0005, True), (0.03, True),
                                              (0.031, False)])  # fmt: skip
def test_normal_alert_rate_band(rate: float, passed: bool) -> None:
    assert by_name(make(normal_alert_rate=rate), make())["normal_alert_rate"] is passed


def test_every_failed_rule_is_named() -> None:
    bad = make(roc_auc=0.6, pr_auc=0.04, recall_at_reference_rate=0.15, normal_alert_rate=0.2)
    verdict = apply_gate(bad, make(), RULES)
    assert [r.name for r in verdict.failures] == [
        "roc_auc", "pr_auc", "recall_at_champion_alert_rate", "normal_alert_rate"
    ]  # fmt: skip


def test_without_a_champion_only_the_band_decides() -> None:
    verdict = apply_gate(make(roc_auc=0.5), None, RULES)
    assert verdict.passed
    assert all("skipped" in r.detail for r in verdict.rules[:3])
    assert not apply_gate(make(normal_alert_rate=0.5), None, RULES).passed


def test_no_fraud_in_the_evaluation_rows_refuses() -> None:
    nan = float("nan")
    verdict = apply_gate(make(roc_auc=nan, pr_auc=nan), make(roc_auc=nan, pr_auc=nan), RULES)
    assert {r.name for r in verdict.failures} >= {"roc_auc", "pr_auc"}


def test_rules_are_configurable_and_checked() -> None:
    strict = GateRules(roc_auc_tolerance=0.0, normal_alert_rate_max=0.005)
    verdict = apply_gate(make(roc_auc=0.989), make(), strict)
    assert {r.name for r in verdict.failures} == {"roc_auc", "normal_alert_rate"}
    with pytest.raises(ValidationError):
        GateRules(normal_alert_rate_min=0.1, normal_alert_rate_max=0.01)
    with pytest.raises(ValidationError):
        GateRules(colour="blue")  # type: ignore[call-arg]


def test_recall_at_alert_rate_takes_the_top_rows() -> None:
    labels = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 1])
    scores = np.array([9.0, 8.0, 7.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5])
    assert recall_at_alert_rate(labels, scores, 0.1) == pytest.approx(1 / 3)
    assert recall_at_alert_rate(labels, scores, 0.3) == pytest.approx(2 / 3)
    assert recall_at_alert_rate(labels, scores, 1.0) == pytest.approx(1.0)
    assert recall_at_alert_rate(labels, scores, 0.0) == 0.0


def test_figures_from_scores() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 2.0, 3.0, 0.25])
    result = figures(labels, scores, threshold=1.0, reference_rate=0.5)
    assert result.alert_rate == pytest.approx(2 / 6)
    assert result.normal_alert_rate == pytest.approx(1 / 4)
    assert result.recall == pytest.approx(0.5)
    assert result.precision == pytest.approx(0.5)
    assert result.recall_at_reference_rate == pytest.approx(0.5)  # top 3 rows: 3.0, 2.0, 0.3
    assert result.roc_auc == pytest.approx(6 / 8)
