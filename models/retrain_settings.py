"""Settings of ``edgewatch-models retrain``: the ``[retrain]`` section of ``central.toml``.

Read like every other edgewatch configuration (the TOML file, then ``EDGEWATCH_*`` variables,
then a credentials directory). The production signing key comes from a file path
(``signing_key_file``) or from a credential named ``retrain__signing_key`` holding the PEM
text, so it never has to sit in the TOML file. Per stream, the feature list names **raw
payload fields** only: the agent computes model inputs from the payload it receives, so
columns that exist only in ``train.{stream}`` (``hour_of_day``, ``log_amount``, ``label``,
``card_last4`` …) are refused here rather than shipped in a model no box can feed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from models.bundle import ScoreKind
from models.datasets import CREDITCARD_FEATURES
from models.gate import GateRules
from plumbing.settings import KafkaSettings, ServiceSettings, StrictModel

# Columns of train.{stream} the edge never sees in a raw payload, or that are not inputs.
TRAIN_ONLY_COLUMNS = frozenset(
    {"label", "labelled_at", "label_source", "source", "hour_of_day", "log_amount",
     "card_last4", "event_id", "device", "ts", "Time", "Class", "node_id"}
)  # fmt: skip
REPO_BUNDLES = Path(__file__).resolve().parent / "bundles"


class StreamRetrainSettings(StrictModel):
    """How one stream's model is retrained."""

    model: str = Field(
        ..., pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Model (bundle) name on edge.models."
    )
    features: list[str] = Field(
        ...,
        min_length=1,
        description="Raw payload fields the model reads, in order (the bundle's feature spec "
        "maps the payload the agent receives; train-only columns are refused).",
    )
    log1p: list[str] = Field(
        default_factory=list,
        description="Heavy-tailed fields taken as log1p before scaling (the feature spec does "
        "this on the box, so log_amount need not travel: it is log1p(Amount)).",
    )
    clip: float | None = Field(
        10.0, gt=0, description="Scaled inputs are clipped to ±clip (as the shipped model)."
    )
    fallback_champion: Path | None = Field(
        None,
        description="Bundle the boxes run when edge.models holds none of this name yet (the "
        "shipped bundle): it is the champion then, and its version + 1 the next version.",
    )
    evaluation_fraction: float = Field(
        0.2, gt=0, lt=1, description="Newest share of rows both models are evaluated on."
    )
    calibration_fraction: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="Share before the evaluation rows whose normal rows set the threshold "
        "(the oldest rest trains); 60/20/20 as the shipped model's split.",
    )
    max_train_rows: int | None = Field(
        None,
        ge=10,
        description="Train on at most the newest N normal rows of the training part (bounds "
        "memory and time on long histories); unset = all.",
    )
    epochs: int = Field(100, ge=1, le=10_000, description="Most training epochs (early stop).")
    patience: int = Field(10, ge=1, description="Epochs without validation gain before stopping.")
    batch_size: int = Field(64, ge=1, le=65_536, description="Training batch size.")
    hidden: list[int] = Field(
        [14, 7, 7], min_length=1, description="Hidden layer sizes (the reference model's)."
    )
    activations: list[str] = Field(
        ["tanh", "relu", "tanh"], min_length=1, description="One activation per hidden layer."
    )
    calibration_quantile: float = Field(
        0.99, gt=0, lt=1, description="Quantile of calibration scores that is the threshold."
    )
    score_kind: ScoreKind = Field("mse", description="Score kind (see ScoreSpec.kind).")
    seed: int = Field(42, description="Seeds Keras and the representative-data sample.")

    @field_validator("features")
    @classmethod
    def _raw_fields_only(cls, features: list[str]) -> list[str]:
        derived = sorted(set(features) & TRAIN_ONLY_COLUMNS)
        if derived:
            raise ValueError(
                f"{derived} exist only in train topics or are not model inputs; the agent "
                "computes features from the raw payload (use log1p = ['Amount'] for log_amount)"
            )
        if len(set(features)) != len(features):
            raise ValueError("features must be unique")
        return features

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if not set(self.log1p) <= set(self.features):
            raise ValueError(f"log1p fields {sorted(set(self.log1p) - set(self.features))} "
                             "are not among the features")  # fmt: skip
        if len(self.hidden) != len(self.activations):
            raise ValueError("hidden and activations must have the same length")
        if self.evaluation_fraction + self.calibration_fraction >= 0.9:
            raise ValueError("evaluation + calibration fractions leave under 10 % to train on")
        return self


def _default_streams() -> dict[str, StreamRetrainSettings]:
    return {
        "payments": StreamRetrainSettings(
            model="payments-fraud",
            features=list(CREDITCARD_FEATURES),
            log1p=["Amount"],
            fallback_champion=REPO_BUNDLES / "payments-fraud.ewb",
        )
    }


class RetrainSettings(StrictModel):
    """The ``[retrain]`` section."""

    train_topic: str = Field(
        "train.{stream}", min_length=1, description="Training topic; {stream} is replaced."
    )
    models_topic: str = Field(
        "edge.models", min_length=1, description="Compacted topic of published bundles."
    )
    trusted_keys: Path = Field(
        REPO_BUNDLES,
        description="Public key file or directory: the champion must verify with one of them, "
        "and so must a challenger before it is published (the boxes trust the same keys).",
    )
    signing_key_file: Path | None = Field(
        None, description="Production Ed25519 private key (PEM) that signs published bundles."
    )
    signing_key: SecretStr | None = Field(
        None,
        description="The same key as PEM text, e.g. from the credential 'retrain__signing_key' "
        "(systemd LoadCredential=); never logged.",
    )
    report_dir: Path = Field(
        Path("reports/retrain"),
        description="Each run writes report.json and plots into a new directory under this.",
    )
    read_timeout_s: float = Field(
        60.0, gt=0, description="Longest wait for Kafka while reading a topic to its end."
    )
    time_columns: list[str] = Field(
        ["ts", "Time"],
        min_length=1,
        description="Event-time columns, first present wins (train topics carry ts; the "
        "credit-card CSV only Time).",
    )
    label_columns: list[str] = Field(
        ["label", "Class"], min_length=1, description="Label columns (1 = fraud), first wins."
    )
    gate: GateRules = Field(default_factory=GateRules, description="Champion/challenger gate.")
    streams: dict[str, StreamRetrainSettings] = Field(
        default_factory=_default_streams, description="Per stream: model name, features, …"
    )

    @model_validator(mode="after")
    def _one_key_source(self) -> Self:
        if self.signing_key is not None and self.signing_key_file is not None:
            raise ValueError("set signing_key_file or signing_key, not both")
        return self


class RetrainConfig(ServiceSettings):
    """``central.toml`` as far as retraining reads it: Kafka and ``[retrain]``."""

    service_name: ClassVar[str] = "retrain"

    kafka: KafkaSettings = Field(default_factory=KafkaSettings, description="Central Kafka.")
    retrain: RetrainSettings = Field(
        default_factory=RetrainSettings, description="Retraining, gate and publishing."
    )
    central: dict[str, Any] = Field(
        default_factory=dict,
        description="The stream SQL engine ([central]); read and checked by edgewatch-central, "
        "so one central.toml serves both commands.",
    )
