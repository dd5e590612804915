"""Which model version serves a stream, and when that changes: no I/O, decisions only.

The service owns one :class:`Rollout` per stream, feeds it what happens (a verified bundle
offered, a batch's figures, a verified instruction from the centre) and carries out the
:class:`Decision` it returns: swap models between batches, persist the state, publish the
transition. Time comes in as an argument, so every path is testable without a clock.

Phases of a stream:

``serving``
    One model serves; nothing is under test.
``shadow``
    A newer candidate scores every event beside the serving model (same batch, same
    features); only the serving model's results count. When the shadow period is over (at
    least ``shadow_events`` events *and* ``shadow_s`` seconds) the rules decide: pass →
    ``promoted`` (the service swaps between two batches, so every event is scored by
    exactly one serving model), fail → ``rejected``. More errors than ``max_errors``
    reject at once.
``probation``
    The promoted model serves and the previous one scores beside it as reference. The rules
    are checked on every ``check_events`` events with the promoted model in the
    candidate's place; a failed check → ``rolled_back`` to the previous model. A check that
    passes once ``probation_events`` and ``probation_s`` are reached ends probation
    (``probation_passed``) and the reference is let go.

Rules, over one window (the whole shadow period, or one probation check), "new" being the
candidate in shadow and the promoted model on probation:

- errors ≤ ``max_errors``: rows the new model failed on (an inference error counts every
  row of its batch; so does an input its feature spec refuses that the serving one took);
- alert-rate band: ``old × alert_rate_ratio_min − slack ≤ new ≤ old × alert_rate_ratio_max
  + slack``;
- rank agreement: Spearman correlation of the two models' scores ≥ ``min_rank_correlation``,
  over a uniform sample of the window's score pairs (reservoir of ``rank_sample`` pairs,
  so memory is bounded whatever the window's length; fewer than 3 pairs are not judged);
- latency: the 95th percentile of the new model's time per batch (its inputs and inference)
  within ``batch_latency_budget_ms``, or else within ``batch_latency_ratio_max`` times the
  old model's on the same batches: a box busy with other work slows both models alike and
  must not reject a candidate for it (same reservoir bound).

Bounds: a window holds O(``rank_sample``) numbers; ``previous`` keeps at most
``max_previous`` versions; the rejected and rolled-back sets grow by one per release.

Versions never tried again: rejected and rolled-back ones (offers of them are ignored).
An instruction from the centre may still name one: an operator's explicit choice wins.
Offers during probation are ``deferred``: the service offers the latest one again once
the stream is back to ``serving``. Time-based periods end only when batches arrive
(decisions are taken per batch).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating[Any]]
TransitionKind = Literal[
    "installed",
    "shadow_started",
    "promoted",
    "rejected",
    "rolled_back",
    "probation_passed",
    "instructed",
    "ignored",
    "deferred",
    "instruction_refused",  # announced by the service; the machine never decides these
    "instruction_failed",
]


class Phase(StrEnum):
    SERVING = "serving"
    SHADOW = "shadow"
    PROBATION = "probation"


class Version(NamedTuple):
    """One release of a model: its version number and the bundle's sha256."""

    number: int
    sha256: str

    def __str__(self) -> str:
        return f"v{self.number}"


@dataclass(frozen=True, slots=True)
class Rules:
    """The promotion and probation rules (see the module docstring)."""

    shadow_events: int = 2000
    shadow_s: float = 600.0
    probation_events: int = 5000
    probation_s: float = 1800.0
    check_events: int = 500
    alert_rate_ratio_max: float = 2.0
    alert_rate_ratio_min: float = 0.5
    alert_rate_slack: float = 0.01
    min_rank_correlation: float = 0.8
    batch_latency_budget_ms: float = 50.0
    batch_latency_ratio_max: float = 3.0
    max_errors: int = 0
    rank_sample: int = 1024

    def overridden(self, overrides: Mapping[str, Any]) -> Rules:
        """These rules with a bundle's overrides (unset ones are None and keep ours)."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(slots=True)
class ShadowFigures:
    """What one batch of one stream told about two models scoring the same events."""

    events: int = 0  # rows both models scored (the pairs)
    serving_alerts: int = 0
    shadow_alerts: int = 0
    shadow_errors: int = 0  # rows the shadow model failed on
    serving_s: float = 0.0  # the serving model's time on this batch
    shadow_s: float = 0.0
    serving_scores: FloatArray = field(default_factory=lambda: np.empty(0))
    shadow_scores: FloatArray = field(default_factory=lambda: np.empty(0))


@dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    failures: tuple[str, ...]
    figures: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Decision:
    """A transition for the service to carry out and announce."""

    kind: TransitionKind
    from_version: Version | None
    to_version: Version | None
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def quiet(self) -> bool:
        """Nothing changed and nothing to announce (e.g. a retained bundle seen again)."""
        return self.kind == "ignored" and not self.reason


def spearman(a: FloatArray, b: FloatArray) -> float | None:
    """Spearman's rank correlation (ties get their average rank); None below 3 pairs."""
    if len(a) < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    sa, sb = ra.std(), rb.std()
    if sa == 0 or sb == 0:
        return 1.0 if sa == sb else 0.0
    rho = float(np.mean((ra - ra.mean()) * (rb - rb.mean())) / (sa * sb))
    return min(1.0, max(-1.0, rho))  # rounding may step just outside


def _ranks(values: FloatArray) -> npt.NDArray[np.float64]:
    order = np.argsort(values, kind="mergesort")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(first + (counts - 1) / 2, counts)
    return ranks


class Reservoir:
    """A uniform sample of at most ``size`` rows of everything added (Algorithm R).

    Its random numbers come from the standard library: ``numpy.random`` would add ~2 MB
    to the agent's resident memory for a few draws per batch.
    """

    def __init__(self, size: int, columns: int, rng: random.Random) -> None:
        self.rows = np.empty((size, columns), dtype=np.float64)
        self.size = size
        self.seen = 0
        self._rng = rng

    def add(self, rows: npt.ArrayLike) -> None:
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, self.rows.shape[1])
        direct = max(0, min(len(rows), self.size - self.seen))
        self.rows[self.seen : self.seen + direct] = rows[:direct]
        rest = rows[direct:]
        if len(rest):
            first, draw = self.seen + direct, self._rng.randrange
            slots = np.array([draw(first + k + 1) for k in range(len(rest))], dtype=np.int64)
            keep = slots < self.size
            self.rows[slots[keep]] = rest[keep]  # later rows win, as if added one by one
        self.seen += len(rows)

    def sample(self) -> npt.NDArray[np.float64]:
        return self.rows[: min(self.seen, self.size)]


class Window:
    """The figures of one judged stretch: counts, and bounded samples of scores and times."""

    def __init__(self, rank_sample: int, rng: random.Random, started: float) -> None:
        self.started = started
        self.events = self.new_alerts = self.old_alerts = self.errors = self.batches = 0
        self.pairs = Reservoir(rank_sample, 2, rng)
        self.batch_ms = Reservoir(rank_sample, 2, rng)  # new, old model per batch

    def add(self, figures: ShadowFigures, new_is_shadow: bool) -> None:
        f = figures
        self.batches += 1
        self.events += f.events
        self.errors += f.shadow_errors if new_is_shadow else 0
        new_alerts, old_alerts = f.shadow_alerts, f.serving_alerts
        new_scores, old_scores = f.shadow_scores, f.serving_scores
        new_s, old_s = f.shadow_s, f.serving_s
        if not new_is_shadow:
            new_alerts, old_alerts = old_alerts, new_alerts
            new_scores, old_scores = old_scores, new_scores
            new_s, old_s = old_s, new_s
        self.new_alerts += new_alerts
        self.old_alerts += old_alerts
        if f.events:
            self.pairs.add(np.column_stack((new_scores, old_scores)))
            self.batch_ms.add([new_s * 1000, old_s * 1000])

    def verdict(self, rules: Rules, now: float) -> Verdict:
        r = rules
        new_rate = self.new_alerts / self.events if self.events else 0.0
        old_rate = self.old_alerts / self.events if self.events else 0.0
        low = max(0.0, old_rate * r.alert_rate_ratio_min - r.alert_rate_slack)
        high = old_rate * r.alert_rate_ratio_max + r.alert_rate_slack
        pairs = self.pairs.sample()
        rho = spearman(pairs[:, 0], pairs[:, 1])
        times = self.batch_ms.sample()
        p95 = p95_old = None
        if len(times):
            p95, p95_old = (float(v) for v in np.percentile(times, 95, axis=0))
        failures = []
        if self.errors > r.max_errors:
            failures.append(f"{self.errors} errors (at most {r.max_errors})")
        if self.events and not low <= new_rate <= high:
            failures.append(
                f"alert rate {new_rate:.4f} outside {low:.4f}–{high:.4f} (current {old_rate:.4f})"
            )
        if rho is not None and rho < r.min_rank_correlation:
            failures.append(f"rank correlation {rho:.3f} below {r.min_rank_correlation}")
        if (
            p95 is not None
            and p95_old is not None
            and p95 > max(r.batch_latency_budget_ms, r.batch_latency_ratio_max * p95_old)
        ):
            failures.append(
                f"p95 batch time {p95:.2f} ms over {r.batch_latency_budget_ms} ms and "
                f"{r.batch_latency_ratio_max}x the current {p95_old:.2f} ms"
            )
        figures = {
            "events": self.events,
            "seconds": round(now - self.started, 3),
            "new_alert_rate": round(new_rate, 5),
            "old_alert_rate": round(old_rate, 5),
            "alert_rate_band": [round(low, 5), round(high, 5)],
            "rank_correlation": None if rho is None else round(rho, 4),
            "rank_pairs": len(pairs),
            "p95_batch_ms": None if p95 is None else round(p95, 3),
            "p95_batch_ms_current": None if p95_old is None else round(p95_old, 3),
            "errors": self.errors,
        }
        return Verdict(not failures, tuple(failures), figures)


class Rollout:
    """One stream's rollout state; every method returns the decision it took."""

    def __init__(
        self,
        rules: Rules,
        *,
        active: Version | None = None,
        previous: Iterable[Version] = (),
        rolled_back: Iterable[int] = (),
        rejected: Iterable[int] = (),
        max_previous: int = 3,
        seed: int = 0,
    ) -> None:
        self.rules = rules  # the box's rules; a version under test may override them
        self.active = active
        self.candidate: Version | None = None
        self.previous = list(previous)[:max_previous]
        self.rolled_back = set(rolled_back)
        self.rejected = set(rejected)
        self.max_previous = max_previous
        self.phase = Phase.SERVING
        self.last: Decision | None = None
        self._rng = random.Random(seed)
        self._testing = rules  # the rules of the version under test
        self._window: Window | None = None
        self._period_started = 0.0
        self._period_events = 0

    # -- inputs ------------------------------------------------------------------------------
    def offer(
        self, version: Version, now: float, overrides: Mapping[str, Any] | None = None
    ) -> Decision:
        """A verified bundle for this box (the service checked signature and cohort);
        ``overrides``: the bundle's own rules (its manifest's ``rollout.rules``)."""
        if self.active is None:
            self.active = version
            return self._decide("installed", None, version, "nothing was serving")
        why_not = self._why_not(version)
        if why_not is not None:
            return Decision("ignored", self.active, version, why_not)
        if self.phase is Phase.PROBATION:
            return Decision("deferred", self.active, version,
                            f"{self.active} is on probation")  # fmt: skip
        replaced = f"; replaces candidate {self.candidate}" if self.candidate else ""
        self.candidate = version
        self._start(Phase.SHADOW, self.rules.overridden(overrides or {}), now)
        return self._decide("shadow_started", self.active, version,
                            f"newer signed version{replaced}")  # fmt: skip

    def _why_not(self, version: Version) -> str | None:
        """Why an offered version is not taken up ("" when it is simply seen again)."""
        assert self.active is not None
        if version in (self.active, self.candidate):
            return ""
        if version.number in self.rolled_back:
            return f"{version} was rolled back; not tried again"
        if version.number in self.rejected:
            return f"{version} was rejected; not tried again"
        if version.number <= self.active.number:
            return f"{version} is not newer than {self.active}"
        candidate = self.shadow_candidate
        if candidate is not None and version.number <= candidate.number:
            return f"{version} is not newer than candidate {candidate}"
        return None

    def observe(self, figures: ShadowFigures, now: float) -> Decision | None:
        """One batch's figures (both models on the same events); a decision or None."""
        window = self._window
        if window is None or self.phase is Phase.SERVING:
            return None
        shadow = self.phase is Phase.SHADOW
        window.add(figures, new_is_shadow=shadow)
        self._period_events += figures.events
        if shadow:
            return self._judge_shadow(window, now)
        return self._judge_probation(window, now)

    def _judge_shadow(self, window: Window, now: float) -> Decision | None:
        r = self._testing
        if window.errors > r.max_errors:
            return self._reject(window.verdict(r, now))
        if self._period_events < r.shadow_events or now - window.started < r.shadow_s:
            return None
        verdict = window.verdict(r, now)
        return self._promote(verdict, now) if verdict.passed else self._reject(verdict)

    def _judge_probation(self, window: Window, now: float) -> Decision | None:
        r = self._testing
        if window.errors <= r.max_errors and window.events < r.check_events:
            return None
        verdict = window.verdict(r, now)
        if not verdict.passed:
            return self._roll_back(verdict)
        over = (self._period_events >= r.probation_events
                and now - self._period_started >= r.probation_s)  # fmt: skip
        if over:
            self.phase, self._window = Phase.SERVING, None
            reference, self.candidate = self.candidate, None
            return self._decide("probation_passed", reference, self.active,
                                "kept its rules through probation", verdict.figures)  # fmt: skip
        self._window = Window(r.rank_sample, self._rng, now)
        return None

    def instruct(self, version: Version, reason: str = "") -> Decision:
        """The centre says: serve ``version`` (the service has it, verified). Versions newer
        than it that are serving or in shadow are retired, as if rolled back."""
        old = self.active
        why = f"instruction from the centre{': ' + reason if reason else ''}"
        if version == old:
            candidate = self.shadow_candidate
            if candidate is None or candidate.number <= version.number:
                return Decision("ignored", old, version, f"{why}; already serving {version}")
            self.rolled_back.add(candidate.number)  # the centre pins this version
            self.candidate, self.phase, self._window = None, Phase.SERVING, None
            return self._decide("instructed", old, version, f"{why}; candidate {candidate} retired")
        self.rolled_back.discard(version.number)
        self.rejected.discard(version.number)
        newer = [v for v in (old, self.candidate) if v is not None and v.number > version.number]
        self.rolled_back.update(v.number for v in newer)
        self.previous = [v for v in self.previous if v != version]
        if old is not None and old not in newer:
            self.previous.insert(0, old)
        self.previous = [v for v in self.previous if v.number not in self.rolled_back]
        del self.previous[self.max_previous :]
        self.active, self.candidate = version, None
        self.phase, self._window = Phase.SERVING, None
        kind: TransitionKind = (
            "rolled_back" if old and version.number < old.number else "instructed"
        )
        return self._decide(kind, old, version, why)

    # -- transitions -------------------------------------------------------------------------
    def _start(self, phase: Phase, rules: Rules, now: float) -> None:
        self.phase, self._testing = phase, rules
        self._window = Window(rules.rank_sample, self._rng, now)
        self._period_started, self._period_events = now, 0

    def _promote(self, verdict: Verdict, now: float) -> Decision:
        old, new = self.active, self.candidate
        assert old is not None
        assert new is not None
        self.previous.insert(0, old)
        del self.previous[self.max_previous :]
        self.active, self.candidate = new, old  # on probation the candidate slot is the reference
        if self._testing.probation_events or self._testing.probation_s:
            self._start(Phase.PROBATION, self._testing, now)
        else:
            self.phase, self._window, self.candidate = Phase.SERVING, None, None
        return self._decide("promoted", old, new, "passed every rule in shadow", verdict.figures)

    def _reject(self, verdict: Verdict) -> Decision:
        new = self.candidate
        assert new is not None
        self.rejected.add(new.number)
        self.candidate, self.phase, self._window = None, Phase.SERVING, None
        return self._decide("rejected", self.active, new, "; ".join(verdict.failures),
                            verdict.figures)  # fmt: skip

    def _roll_back(self, verdict: Verdict) -> Decision:
        bad, reference = self.active, self.candidate
        assert bad is not None
        assert reference is not None
        self.rolled_back.add(bad.number)
        self.previous = [v for v in self.previous if v != reference]
        self.active, self.candidate = reference, None
        self.phase, self._window = Phase.SERVING, None
        return self._decide("rolled_back", bad, reference,
                            "on probation: " + "; ".join(verdict.failures),
                            verdict.figures)  # fmt: skip

    def drop_candidate(self, reason: str) -> Decision:
        """The service could not run the candidate at all (e.g. it does not load): rejected."""
        figures = {"errors": 1}
        return self._reject(Verdict(False, (reason,), figures))

    def resume_probation(self, now: float, overrides: Mapping[str, Any] | None = None) -> None:
        """After a restart on probation: judge again from scratch, previous[0] the reference."""
        if self.previous and self.active is not None:
            self.candidate = self.previous[0]
            self._start(Phase.PROBATION, self.rules.overridden(overrides or {}), now)

    def _decide(self, kind: TransitionKind, old: Version | None, new: Version | None,
                reason: str, figures: dict[str, Any] | None = None) -> Decision:  # fmt: skip
        self.last = Decision(kind, old, new, reason, figures or {})
        return self.last

    # -- views -------------------------------------------------------------------------------
    @property
    def beside(self) -> Version | None:
        """The model scoring beside the serving one: candidate in shadow, previous on probation."""
        return self.candidate if self.phase is not Phase.SERVING else None

    @property
    def shadow_candidate(self) -> Version | None:
        return self.candidate if self.phase is Phase.SHADOW else None

    def state(self) -> dict[str, Any]:
        """What survives a restart (versions by number and sha256)."""
        return {
            "active": None if self.active is None else self.active._asdict(),
            "previous": [v._asdict() for v in self.previous],
            "rolled_back": sorted(self.rolled_back),
            "rejected": sorted(self.rejected),
            "probation": self.phase is Phase.PROBATION,
        }
