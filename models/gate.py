"""The champion/challenger gate: may a retrained model replace the one in production?

Pure functions, no I/O: :func:`figures` turns one model's scores on the evaluation rows into
the numbers the rules read, :func:`apply_gate` compares a challenger's figures with the
champion's under :class:`GateRules` and returns every rule with both figures and its verdict.
Both models must have been scored on the same rows (the newest labelled ones), through the
edge scorer, so the comparison is the one the fleet would see.

Rules (defaults in :class:`GateRules`, configurable in ``central.toml`` ``[retrain.gate]``):

- ``roc_auc`` and ``pr_auc``: the challenger's is not below the champion's minus a tolerance;
- ``recall_at_champion_alert_rate``: alerting on as many rows as the champion does, the
  challenger catches at least as many frauds (its recall is not below the champion's);
- ``normal_alert_rate``: at its own threshold, the challenger alerts on a share of the normal
  rows inside a band (a threshold that floods operators, or never fires, is refused).

With no champion (the first model of a name), the champion-relative rules pass as skipped and
say so; the band still applies.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.metrics import average_precision, roc_auc


class GateRules(BaseModel):
    """Thresholds of the gate (``[retrain.gate]`` in ``central.toml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    roc_auc_tolerance: float = Field(
        0.005,
        ge=0,
        le=1,
        description="The challenger's ROC-AUC may be at most this much below the champion's: "
        "on ~2,000 evaluation rows with a dozen frauds, one fraud ranked one place lower moves "
        "ROC-AUC by well under this, so the gate does not refuse on noise alone.",
    )
    pr_auc_tolerance: float = Field(
        0.005, ge=0, le=1, description="The same allowance for PR-AUC (average precision)."
    )
    recall_tolerance: float = Field(
        0.0,
        ge=0,
        le=1,
        description="How far below the champion's recall (both at the champion's alert rate) "
        "the challenger's may be; 0 = not below.",
    )
    normal_alert_rate_min: float = Field(
        0.0005,
        ge=0,
        le=1,
        description="Lowest share of normal evaluation rows the challenger may alert on at "
        "its own threshold: below it the threshold is so high that the model barely fires.",
    )
    normal_alert_rate_max: float = Field(
        0.03,
        ge=0,
        le=1,
        description="Highest share of normal rows it may alert on. The threshold is the 0.99 "
        "quantile of held-out normal scores (1 %); newer rows drift, and 3 % leaves room for "
        "that while refusing a threshold that would flood the operators.",
    )

    @model_validator(mode="after")
    def _band_ordered(self) -> GateRules:
        if self.normal_alert_rate_min > self.normal_alert_rate_max:
            raise ValueError("normal_alert_rate_min must not exceed normal_alert_rate_max")
        return self


@dataclass(frozen=True)
class ModelFigures:
    """One model's numbers on the evaluation rows (what the rules read)."""

    rows: int
    positives: int
    roc_auc: float
    pr_auc: float
    threshold: float
    alert_rate: float  # share of all rows at or above the model's own threshold
    normal_alert_rate: float  # share of normal rows at or above it
    recall: float  # at the model's own threshold
    precision: float  # at the model's own threshold
    reference_alert_rate: float  # the champion's alert rate (the rate recall is compared at)
    recall_at_reference_rate: float  # recall when alerting on that share of rows

    def to_dict(self) -> dict[str, Any]:
        return {k: _finite_or_none(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class RuleResult:
    """One rule: its verdict, the challenger's figure and what it was held against."""

    name: str
    passed: bool
    challenger: float | None
    reference: float | None
    required: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    passed: bool
    rules: tuple[RuleResult, ...]

    @property
    def failures(self) -> list[RuleResult]:
        return [rule for rule in self.rules if not rule.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "rules": [rule.to_dict() for rule in self.rules]}


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def alert_rate(scores: npt.ArrayLike, threshold: float) -> float:
    s = np.asarray(scores, dtype=np.float64)
    return float((s >= threshold).mean()) if len(s) else 0.0


def recall_at_alert_rate(labels: npt.ArrayLike, scores: npt.ArrayLike, rate: float) -> float:
    """Recall when the ``ceil(rate × rows)`` highest-scoring rows alert (ties all alert)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if not y.any():
        return float("nan")
    k = math.ceil(rate * len(s) - 1e-9)
    if k <= 0:
        return 0.0
    cut = np.sort(s)[::-1][min(k, len(s)) - 1]
    return float((y & (s >= cut)).sum() / y.sum())


def figures(
    labels: npt.ArrayLike, scores: npt.ArrayLike, threshold: float, reference_rate: float
) -> ModelFigures:
    """One model's figures; ``reference_rate`` is the champion's alert rate on the same rows."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    alerts = s >= threshold
    true_pos = int((alerts & y).sum())
    return ModelFigures(
        rows=len(y),
        positives=int(y.sum()),
        roc_auc=roc_auc(y, s),
        pr_auc=average_precision(y, s),
        threshold=float(threshold),
        alert_rate=float(alerts.mean()) if len(s) else 0.0,
        normal_alert_rate=float(alerts[~y].mean()) if (~y).any() else 0.0,
        recall=true_pos / int(y.sum()) if y.any() else float("nan"),
        precision=true_pos / int(alerts.sum()) if alerts.any() else 0.0,
        reference_alert_rate=float(reference_rate),
        recall_at_reference_rate=recall_at_alert_rate(y, s, reference_rate),
    )


def _not_below(name: str, challenger: float, champion: float, tolerance: float) -> RuleResult:
    floor = champion - tolerance
    passed = math.isfinite(challenger) and (not math.isfinite(champion) or challenger >= floor)
    sign = ">=" if passed else "<"
    shown = f"champion {champion:.4f}" + (f" - {tolerance:g} = {floor:.4f}" if tolerance else "")
    return RuleResult(
        name=name,
        passed=passed,
        challenger=_finite_or_none(challenger),
        reference=_finite_or_none(champion),
        required=f">= champion - {tolerance:g}",
        detail=f"{name}: challenger {challenger:.4f} {sign} {shown}",
    )


def _skipped(name: str, challenger: float) -> RuleResult:
    return RuleResult(
        name=name,
        passed=True,
        challenger=_finite_or_none(challenger),
        reference=None,
        required="champion's figure",
        detail=f"{name}: challenger {challenger:.4f}, skipped (no champion)",
    )


def apply_gate(
    challenger: ModelFigures, champion: ModelFigures | None, rules: GateRules
) -> Verdict:
    """Every rule's verdict; the challenger passes when all of them pass."""
    results: list[RuleResult] = []
    pairs = (
        ("roc_auc", challenger.roc_auc, rules.roc_auc_tolerance, "roc_auc"),
        ("pr_auc", challenger.pr_auc, rules.pr_auc_tolerance, "pr_auc"),
        (
            "recall_at_champion_alert_rate",
            challenger.recall_at_reference_rate,
            rules.recall_tolerance,
            "recall_at_reference_rate",
        ),
    )
    for name, value, tolerance, attribute in pairs:
        if champion is None:
            results.append(_skipped(name, value))
        else:
            results.append(_not_below(name, value, getattr(champion, attribute), tolerance))
    low, high = rules.normal_alert_rate_min, rules.normal_alert_rate_max
    rate = challenger.normal_alert_rate
    inside = low <= rate <= high
    results.append(
        RuleResult(
            name="normal_alert_rate",
            passed=inside,
            challenger=rate,
            reference=champion.normal_alert_rate if champion is not None else None,
            required=f"in [{low:g}, {high:g}]",
            detail=f"normal_alert_rate: challenger {rate:.4f} "
            f"{'inside' if inside else 'outside'} [{low:g}, {high:g}]"
            + (f" (champion {champion.normal_alert_rate:.4f})" if champion is not None else ""),
        )
    )
    return Verdict(passed=all(r.passed for r in results), rules=tuple(results))
