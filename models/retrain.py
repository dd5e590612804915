"""Retraining from ``train.{stream}``: split by time, train, gate against the champion, publish.

One run (:func:`run_retrain`, behind ``edgewatch-models retrain``), each step also callable
on its own from Python or a notebook:

1. :func:`load_champion`: the newest validly signed bundle of the stream's model on
   ``edge.models`` (read to its end), else the configured fallback (the shipped bundle).
2. :func:`load_rows`: the labelled rows of ``train.{stream}``, read from the beginning to the
   end offsets at start with a read_committed consumer, or a CSV / Parquet file (offline);
   de-duplicated by ``event_id``; optionally bounded to ``[start, end)`` of event time; rows
   lacking a usable value for a field either model reads are dropped and counted.
3. :func:`train_challenger`: :func:`models.timesplit.time_split` (never random: the oldest
   normal rows train, the next ones set the threshold, the newest rows judge), then the
   existing training code (Keras autoencoder with its progress bar, int8 conversion, threshold
   through the edge scorer). Features are raw payload fields only (see
   :mod:`models.retrain_settings`), so the bundle's feature spec maps what the agent receives.
4. :func:`evaluate_pair`: both models score the same newest rows through the edge scorer
   (:func:`models.evaluation.payload_inputs`, :class:`models.scoring.Scorer`); the pure gate
   (:mod:`models.gate`) decides.
5. Always a report directory (:mod:`models.report`). Only when the gate passes and this is
   not a dry run: sign with the production key, version = champion's + 1, verify with the
   trusted keys (what the boxes will do), publish to ``edge.models`` (or, with
   ``publish=False``, keep the signed bundle in the report directory for review or staging).
   Nothing is signed or produced otherwise.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from models.bundle import Bundle, load_bundle, load_private_key, load_trusted_keys, sign_bundle
from models.champion import Champion, find_champion
from models.evaluation import metrics_summary, payload_inputs
from models.features import FeatureSpec
from models.gate import ModelFigures, Verdict, apply_gate, figures
from models.metrics import detection_report
from models.report import write_json, write_plots
from models.retrain_settings import RetrainConfig, StreamRetrainSettings
from models.scoring import Scorer
from models.timesplit import TimeSplit, time_split
from plumbing.errors import EdgewatchError

log = logging.getLogger(__name__)


class RetrainError(EdgewatchError):
    """Retraining cannot proceed: no rows, unknown stream, unusable key or columns."""


class GateRefusedError(RetrainError):
    """The challenger did not pass the gate; nothing was signed or published."""


# -- small helpers -------------------------------------------------------------------------------
def parse_time(text: str) -> float:
    """Epoch seconds from '1764500000', '2026-11-30T12:00:00Z' or '2026-11-30 12:00' (UTC)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise RetrainError(f"{text!r} is neither epoch seconds nor an ISO 8601 time") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def _iso(seconds: float | None) -> str | None:
    if seconds is None or not np.isfinite(seconds):
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds")


def epoch_seconds(column: Any) -> npt.NDArray[np.float64]:
    """A time column (epoch s or ms, or timestamp strings) as float epoch seconds (NaN if bad)."""
    import pandas as pd

    numeric = pd.to_numeric(column, errors="coerce")
    if numeric.notna().all():
        values: npt.NDArray[np.float64] = numeric.to_numpy(dtype=np.float64)
        return values / 1000.0 if len(values) and np.nanmedian(values) > 1e11 else values
    stamps = pd.to_datetime(column, utc=True, errors="coerce", format="mixed")
    seconds: npt.NDArray[np.float64] = stamps.astype("int64").to_numpy(dtype=np.float64) / 1e9
    seconds[stamps.isna().to_numpy()] = np.nan
    return seconds


def stream_settings(config: RetrainConfig, stream: str) -> StreamRetrainSettings:
    try:
        return config.retrain.streams[stream]
    except KeyError:
        known = ", ".join(sorted(config.retrain.streams)) or "none"
        raise RetrainError(f"no [retrain.streams.{stream}] configured (known: {known})") from None


@contextmanager
def _stage(name: str, timings: dict[str, float], echo: bool) -> Iterator[None]:
    started = time.perf_counter()
    if echo:
        print(f"[retrain] {name} …", file=sys.stderr, flush=True)
    yield
    timings[name] = round(time.perf_counter() - started, 3)


# -- 1. champion ---------------------------------------------------------------------------------
def load_champion(
    config: RetrainConfig, stream: str, champion_path: Path | None = None
) -> Champion | None:
    """The model in production for ``stream`` (see :mod:`models.champion`)."""
    settings = stream_settings(config, stream)
    trusted = load_trusted_keys(config.retrain.trusted_keys)
    if champion_path is not None:
        return Champion(load_bundle(champion_path, trusted), str(champion_path))
    return find_champion(
        config.kafka,
        config.retrain.models_topic,
        settings.model,
        trusted,
        fallback=settings.fallback_champion,
        timeout_s=config.retrain.read_timeout_s,
    )


def fields_read(config: RetrainConfig, stream: str, champion: Champion | None) -> list[str]:
    """Fields the rows need: the challenger's features, then any more the champion reads."""
    fields = list(stream_settings(config, stream).features)
    if champion is not None:
        fields += [f for f in champion.bundle.manifest.features.names if f not in fields]
    return fields


# -- 2. rows -------------------------------------------------------------------------------------
@dataclass
class TrainRows:
    """Usable labelled rows in event-time order, with where they came from."""

    frame: Any  # pandas.DataFrame
    times: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int8]
    source: dict[str, Any]

    def __len__(self) -> int:
        return len(self.labels)

    def payloads(self, rows: npt.NDArray[np.intp], fields: list[str]) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = self.frame.iloc[rows][fields].to_dict("records")
        return records


def read_frame(config: RetrainConfig, stream: str, data: Path | None) -> tuple[Any, dict[str, Any]]:
    """The raw table: a CSV / Parquet file, or every committed record of the train topic."""
    import pandas as pd

    if data is not None:
        if data.suffix in {".parquet", ".pq"}:
            try:
                frame = pd.read_parquet(data)
            except ImportError as exc:
                raise RetrainError(f"reading {data} needs pyarrow: {exc}") from exc
        else:
            frame = pd.read_csv(data)
        return frame, {"kind": "file", "path": str(data), "records": len(frame)}
    from models.kafka_read import read_to_end

    topic = config.retrain.train_topic.format(stream=stream)
    records = read_to_end(config.kafka, topic, config.retrain.read_timeout_s)
    documents, malformed = [], 0
    for record in records:
        try:
            document = json.loads(record.value or b"")
        except ValueError:
            malformed += 1
            continue
        if isinstance(document, dict):
            documents.append(document)
        else:
            malformed += 1
    source = {"kind": "kafka", "topic": topic, "records": len(records), "malformed": malformed}
    return pd.DataFrame.from_records(documents), source


def load_rows(
    config: RetrainConfig,
    stream: str,
    fields: list[str],
    *,
    data: Path | None = None,
    start: float | None = None,
    end: float | None = None,
) -> TrainRows:
    """Labelled rows with a time and a finite value for each of ``fields``, oldest first."""
    import pandas as pd

    frame, source = read_frame(config, stream, data)
    origin = source.get("topic", source.get("path"))
    if frame.empty:
        raise RetrainError(f"no rows in {origin}")
    time_column = next((c for c in config.retrain.time_columns if c in frame.columns), None)
    label_column = next((c for c in config.retrain.label_columns if c in frame.columns), None)
    missing = [c for c in fields if c not in frame.columns]
    if time_column is None:
        missing.insert(0, f"a time column ({'/'.join(config.retrain.time_columns)})")
    if label_column is None:
        missing.insert(0, f"a label ({'/'.join(config.retrain.label_columns)})")
    if missing:
        raise RetrainError(f"{origin} lacks columns: {', '.join(missing)}")
    if "event_id" in frame.columns:
        before = len(frame)
        frame = frame.drop_duplicates("event_id", keep="last")
        source["duplicates"] = before - len(frame)
    frame = frame.copy()
    for column in fields:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    labels = pd.to_numeric(frame[label_column], errors="coerce")
    times = epoch_seconds(frame[time_column])
    usable = labels.notna().to_numpy() & np.isfinite(times)
    usable &= np.isfinite(frame[fields].to_numpy(dtype=np.float64)).all(axis=1)
    if start is not None:
        usable &= times >= start
    if end is not None:
        usable &= times < end
    source.update(
        time_column=time_column,
        label_column=label_column,
        unusable_or_outside_window=int((~usable).sum()),
        window={"from": _iso(start), "to": _iso(end)},
    )
    order = np.argsort(times[usable], kind="stable")
    kept = frame.loc[usable].iloc[order].reset_index(drop=True)
    y = (labels.to_numpy()[usable][order] > 0.5).astype(np.int8)
    t = times[usable][order]
    source["rows"] = len(kept)
    source["anomalies"] = int(y.sum())
    if kept.empty:
        raise RetrainError(f"no usable labelled rows in {origin} (see the report's source)")
    return TrainRows(kept, t, y, source)


# -- 3. challenger -------------------------------------------------------------------------------
@dataclass
class Challenger:
    trained: Any  # models.training.TrainedModel
    bundle: Bundle  # unsigned, for scoring
    split: TimeSplit
    features: list[str]


def train_config(settings: StreamRetrainSettings, progress: bool) -> Any:
    from models.training import TrainConfig

    return TrainConfig(
        hidden=tuple(settings.hidden),
        activations=tuple(settings.activations),
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        patience=settings.patience,
        seed=settings.seed,
        calibration_quantile=settings.calibration_quantile,
        score_kind=settings.score_kind,
        progress=progress,
    )


def split_rows(config: RetrainConfig, stream: str, rows: TrainRows) -> TimeSplit:
    settings = stream_settings(config, stream)
    split = time_split(
        rows.times,
        rows.labels,
        evaluation_fraction=settings.evaluation_fraction,
        calibration_fraction=settings.calibration_fraction,
    )
    if settings.max_train_rows is not None and len(split.train) > settings.max_train_rows:
        newest = split.train[np.argsort(rows.times[split.train], kind="stable")]
        split = TimeSplit(
            train=np.sort(newest[-settings.max_train_rows :]),
            calibration=split.calibration,
            evaluation=split.evaluation,
            calibration_from=split.calibration_from,
            evaluation_from=split.evaluation_from,
            dropped_anomalies=split.dropped_anomalies,
        )
    return split


def train_challenger(
    config: RetrainConfig,
    stream: str,
    rows: TrainRows,
    version: int,
    *,
    progress: bool = True,
    split: TimeSplit | None = None,
) -> Challenger:
    """Fit the feature spec and the autoencoder on the older rows; int8; threshold."""
    from models.training import fit_model, unsigned_bundle

    settings = stream_settings(config, stream)
    split = split if split is not None else split_rows(config, stream, rows)
    features = list(settings.features)
    raw = rows.frame[features].to_numpy(dtype=np.float64)
    spec = FeatureSpec.fit(features, raw[split.train], log1p=settings.log1p, clip=settings.clip)
    x, rejected = spec.transform(raw)
    if rejected:
        raise RetrainError(f"{len(rejected)} rows not finite after cleaning, e.g. {rejected[0]}")
    info = {
        "source": rows.source,
        "split": split.summary(rows.times, rows.labels),
        "stream": stream,
    }
    # TensorFlow's converter prints the SavedModel it wrote to stdout: not the caller's output.
    with contextlib.redirect_stdout(io.StringIO()):
        trained = fit_model(
            spec,
            x[split.train],
            x[split.calibration],
            name=settings.model,
            version=version,
            stream=stream,
            config=train_config(settings, progress),
            training_info=info,
        )
    bundle = unsigned_bundle(trained.manifest, trained.int8_model)
    return Challenger(trained, bundle, split, features)


# -- 4. evaluation and gate ----------------------------------------------------------------------
@dataclass
class Evaluation:
    labels: npt.NDArray[np.int8]
    challenger_scores: npt.NDArray[np.float32]
    champion_scores: npt.NDArray[np.float32] | None
    challenger: ModelFigures
    champion: ModelFigures | None
    verdict: Verdict

    def scored_models(self, challenger: Challenger, champion: Champion | None) -> dict[str, Any]:
        models: dict[str, Any] = {}
        if champion is not None and self.champion_scores is not None:
            label = f"champion v{champion.bundle.manifest.version}"
            models[label] = (self.champion_scores, champion.bundle.manifest.score.threshold)
        label = f"challenger v{challenger.trained.manifest.version}"
        models[label] = (self.challenger_scores, challenger.trained.manifest.score.threshold)
        return models


def score_rows(bundle: Bundle, rows: TrainRows, which: npt.NDArray[np.intp]) -> Any:
    """Scores of some rows as the edge computes them (feature spec → int8 model → score)."""
    inputs = payload_inputs(bundle, rows.payloads(which, bundle.manifest.features.names))
    return Scorer(bundle).score(inputs).scores


def evaluate_pair(
    config: RetrainConfig, rows: TrainRows, challenger: Challenger, champion: Champion | None
) -> Evaluation:
    """Both models on the same newest rows, then the gate."""
    which = challenger.split.evaluation
    labels = rows.labels[which]
    challenger_scores = score_rows(challenger.bundle, rows, which)
    challenger_threshold = challenger.trained.manifest.score.threshold
    champion_scores = champion_figures = None
    reference_rate = float((challenger_scores >= challenger_threshold).mean())
    if champion is not None:
        missing = sorted(set(champion.bundle.manifest.features.names) - set(rows.frame.columns))
        if missing:
            raise RetrainError(f"the champion reads {missing}, which the train rows lack")
        champion_scores = score_rows(champion.bundle, rows, which)
        threshold = champion.bundle.manifest.score.threshold
        reference_rate = float((champion_scores >= threshold).mean())
        champion_figures = figures(labels, champion_scores, threshold, reference_rate)
    challenger_figures = figures(labels, challenger_scores, challenger_threshold, reference_rate)
    verdict = apply_gate(challenger_figures, champion_figures, config.retrain.gate)
    return Evaluation(
        labels, challenger_scores, champion_scores, challenger_figures, champion_figures, verdict
    )


# -- 5. sign and publish -------------------------------------------------------------------------
def signing_key(config: RetrainConfig) -> Ed25519PrivateKey:
    """The production key from ``signing_key_file`` or the ``signing_key`` credential."""
    retrain = config.retrain
    if retrain.signing_key_file is not None:
        return load_private_key(retrain.signing_key_file)
    if retrain.signing_key is None:
        raise RetrainError(
            "no signing key: set retrain.signing_key_file, or provide the credential "
            "retrain__signing_key (PEM)"
        )
    try:
        key = serialization.load_pem_private_key(
            retrain.signing_key.get_secret_value().encode(), password=None
        )
    except ValueError as exc:
        raise RetrainError(f"retrain.signing_key is not a PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise RetrainError("retrain.signing_key is not an Ed25519 private key")
    return key


def sign_and_publish(
    config: RetrainConfig,
    challenger: Challenger,
    evaluation: Evaluation,
    directory: Path,
    *,
    publish: bool = True,
) -> Path:
    """Sign the challenger (its metrics in the manifest) into ``directory``; publish it
    (checked as a box would check it first) unless ``publish`` is False."""
    from models.publish import publish_bundle

    report = detection_report(
        evaluation.labels, evaluation.challenger_scores, evaluation.challenger.threshold
    )
    manifest = challenger.trained.manifest.model_copy(update={"metrics": metrics_summary(report)})
    data = sign_bundle(manifest, challenger.trained.int8_model, signing_key(config))
    path = directory / f"{manifest.name}-v{manifest.version}.ewb"
    path.write_bytes(data)
    trusted = load_trusted_keys(config.retrain.trusted_keys)
    if publish:
        publish_bundle(path, config.kafka, config.retrain.models_topic, trusted)
    else:
        load_bundle(path, trusted)  # what publish_bundle checks: the boxes would accept it
    return path


# -- the whole run -------------------------------------------------------------------------------
@dataclass
class RetrainResult:
    report_dir: Path
    verdict: Verdict
    version: int
    published: Path | None
    document: dict[str, Any] = field(default_factory=dict)
    signed: Path | None = None  # the signed bundle (published, or kept with --no-publish)

    @property
    def passed(self) -> bool:
        return self.verdict.passed


def next_version(champion: Champion | None) -> int:
    """The version a published challenger gets: the champion's + 1 (1 for a first model)."""
    return champion.bundle.manifest.version + 1 if champion is not None else 1


def publish_if_passed(
    config: RetrainConfig, challenger: Challenger, evaluation: Evaluation, directory: Path
) -> Path:
    """Sign and publish the challenger when the gate passed it; else raise naming each rule."""
    if not evaluation.verdict.passed:
        failed = "; ".join(rule.detail for rule in evaluation.verdict.failures)
        raise GateRefusedError(f"the gate refused the challenger, nothing published: {failed}")
    directory.mkdir(parents=True, exist_ok=True)
    return sign_and_publish(config, challenger, evaluation, directory)


def new_report_dir(config: RetrainConfig, stream: str) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
    return config.retrain.report_dir / f"{stream}-{stamp}"


def run_retrain(
    config: RetrainConfig,
    stream: str,
    *,
    data: Path | None = None,
    start: float | None = None,
    end: float | None = None,
    dry_run: bool = False,
    publish: bool = True,
    champion_path: Path | None = None,
    report_dir: Path | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> RetrainResult:
    """Steps 1-5 of the module docstring; the report is written whatever the verdict."""
    say = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    settings = stream_settings(config, stream)
    directory = report_dir or new_report_dir(config, stream)
    timings: dict[str, float] = {}
    with _stage("champion", timings, progress):
        champion = load_champion(config, stream, champion_path)
    version = next_version(champion)
    fields = fields_read(config, stream, champion)
    with _stage("read rows", timings, progress):
        rows = load_rows(config, stream, fields, data=data, start=start, end=end)
    split = split_rows(config, stream, rows)
    summary = split.summary(rows.times, rows.labels)
    say(f"rows {len(rows)} ({rows.source['anomalies']} frauds) from "
        f"{rows.source.get('topic') or rows.source.get('path')}; split by time: train "
        f"{summary['train_rows']} < calibration {summary['calibration_rows']} < evaluation "
        f"{summary['evaluation_rows']} ({summary['evaluation_anomalies']} frauds) from "
        f"{_iso(split.evaluation_from)}")  # fmt: skip
    with _stage("train", timings, progress):
        challenger = train_challenger(config, stream, rows, version, progress=progress, split=split)
    with _stage("evaluate", timings, progress):
        evaluation = evaluate_pair(config, rows, challenger, champion)
    verdict = evaluation.verdict
    signed: Path | None = None
    if verdict.passed and not dry_run:
        directory.mkdir(parents=True, exist_ok=True)
        with _stage("sign and publish" if publish else "sign", timings, progress):
            signed = sign_and_publish(config, challenger, evaluation, directory, publish=publish)
    published = signed if publish else None
    with _stage("report", timings, progress):
        scored = evaluation.scored_models(challenger, champion)
        plots = write_plots(directory, evaluation.labels, scored)
        document = {
            "stream": stream,
            "model": settings.model,
            "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "source": rows.source,
            "split": summary | {
                "calibration_from_iso": _iso(split.calibration_from),
                "evaluation_from_iso": _iso(split.evaluation_from),
            },
            "features": challenger.features,
            "log1p": list(settings.log1p),
            "champion": None if champion is None else champion.describe() | {
                "figures": evaluation.champion.to_dict() if evaluation.champion else None
            },
            "challenger": {
                "name": settings.model,
                "version": version,
                "threshold": challenger.trained.manifest.score.threshold,
                "model_sha256": challenger.trained.manifest.model_sha256,
                "train_rows": challenger.trained.manifest.training.get("train_rows"),
                "figures": evaluation.challenger.to_dict(),
            },
            "gate": verdict.to_dict() | {"rules_config": config.retrain.gate.model_dump()},
            "dry_run": dry_run,
            "signed": None if signed is None else str(signed),
            "published": None if published is None else {
                "topic": config.retrain.models_topic,
                "version": version,
                "bundle": str(published),
            },
            "plots": [p.name for p in plots],
            "timings_s": timings,
        }  # fmt: skip
        write_json(directory, document)
    return RetrainResult(directory, verdict, version, published, document, signed)
