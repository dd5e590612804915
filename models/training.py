"""Training an autoencoder and converting it to full-integer int8 TFLite (``train`` extra).

The model learns to reconstruct normal rows only; its score is the reconstruction error.
With ``noise`` > 0 it is a denoising autoencoder: Gaussian noise of that standard deviation
is added to its inputs while training (never when scoring) and it learns the clean rows.
The alert threshold is a quantile of the int8 model's scores on held-out normal rows,
computed through :class:`models.scoring.Scorer`, the same code the edge runs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from models.bundle import Bundle, Manifest, ScoreKind, ScoreSpec, TensorSpec
from models.features import FeatureSpec
from models.scoring import Scorer

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.995, 0.999)


@dataclass
class TrainConfig:
    """Autoencoder shape and training knobs; the default mirrors the reference model."""

    hidden: tuple[int, ...] = (14, 7, 7)
    activations: tuple[str, ...] = ("tanh", "relu", "tanh")
    epochs: int = 100
    batch_size: int = 64
    learning_rate: float = 1e-3
    l1_activity: float = 1e-5
    patience: int = 10
    seed: int = 42
    calibration_quantile: float = 0.99
    # threshold = margin × quantile: >1 leaves room for drift the calibration rows lack.
    threshold_margin: float = 1.0
    score_kind: ScoreKind = "mse"
    representative_rows: int = 1000
    # Denoising: std of the Gaussian noise added to training inputs (scaled units); 0 = off.
    noise: float = 0.0
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainedModel:
    """An unsigned manifest with the int8 model, plus the float model for comparison."""

    manifest: Manifest
    int8_model: bytes
    float_model: bytes

    def float_bundle(self) -> Bundle:
        float_manifest = self.manifest.model_copy(
            update={
                "quantization": "float32",
                "input": TensorSpec(dtype="float32"),
                "output": TensorSpec(dtype="float32"),
                "model_sha256": hashlib.sha256(self.float_model).hexdigest(),
            }
        )
        return unsigned_bundle(float_manifest, self.float_model)


def unsigned_bundle(manifest: Manifest, model: bytes) -> Bundle:
    """A bundle object for scoring before (or without) signing."""
    return Bundle(manifest, model, key_id="unsigned", sha256=hashlib.sha256(model).hexdigest())


def _seed_everything(seed: int) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def build_autoencoder(width: int, config: TrainConfig) -> Any:
    import keras

    if len(config.hidden) != len(config.activations):
        raise ValueError("hidden and activations must have the same length")
    inputs = keras.Input(shape=(width,), name="features")
    x = (
        keras.layers.GaussianNoise(config.noise, seed=config.seed)(inputs)
        if config.noise
        else inputs
    )
    for i, (units, activation) in enumerate(zip(config.hidden, config.activations, strict=True)):
        regularizer = keras.regularizers.L1(config.l1_activity) if i == 0 else None
        x = keras.layers.Dense(units, activation=activation, activity_regularizer=regularizer)(x)
    outputs = keras.layers.Dense(width, activation="linear", name="reconstruction")(x)
    model = keras.Model(inputs, outputs, name="autoencoder")
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss="mse")
    return model


class _EpochBar:
    """A tqdm bar over epochs (Keras' own bar prints a line per batch)."""

    def __new__(cls, epochs: int, enabled: bool) -> Any:
        import keras
        from tqdm.auto import tqdm

        class Callback(keras.callbacks.Callback):  # type: ignore[misc]
            def on_train_begin(self, logs: Any = None) -> None:
                self.bar = tqdm(total=epochs, desc="training", unit="epoch", disable=not enabled,
                                file=sys.stderr)  # fmt: skip

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                logs = logs or {}
                self.bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items()})
                self.bar.update(1)

            def on_train_end(self, logs: Any = None) -> None:
                self.bar.close()

        return Callback()


def train_autoencoder(
    x_train: npt.NDArray[np.float32], x_val: npt.NDArray[np.float32], config: TrainConfig
) -> Any:
    import keras

    _seed_everything(config.seed)
    model = build_autoencoder(x_train.shape[1], config)
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience, restore_best_weights=True
        ),
        _EpochBar(config.epochs, config.progress),
    ]
    model.fit(
        x_train,
        x_train,
        validation_data=(x_val, x_val),
        epochs=config.epochs,
        batch_size=config.batch_size,
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    )
    return model


def to_tflite(model: Any, width: int, representative: npt.NDArray[np.float32] | None) -> bytes:
    """Float32 TFLite, or full-integer int8 (int8 in and out) given representative rows."""
    import tensorflow as tf

    if model.input_shape[-1] != width:
        raise ValueError(f"model takes {model.input_shape[-1]} inputs, not {width}")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if representative is not None:
        rows = representative.astype(np.float32)

        def samples() -> Any:
            for row in rows:
                yield [row[None, :]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return bytes(converter.convert())


def _io_specs(model: bytes) -> tuple[TensorSpec, TensorSpec]:
    from models.scoring import interpreter_class

    interpreter = interpreter_class()[0](model_content=model)
    specs = []
    for detail in (interpreter.get_input_details()[0], interpreter.get_output_details()[0]):
        scale, zero = detail["quantization"]
        specs.append(TensorSpec(dtype=np.dtype(detail["dtype"]).name, scale=scale, zero_point=zero))
    return specs[0], specs[1]


def _config_record(config: TrainConfig) -> dict[str, Any]:
    """The config as the manifest records it (``noise`` only when used, so the manifests of
    models trained before it existed stay byte-identical)."""
    record = {k: v for k, v in asdict(config).items() if k != "progress"}
    if not config.noise:
        del record["noise"]
    return record


def fit_model(
    spec: FeatureSpec,
    x_train: npt.NDArray[np.float32],
    x_calibration: npt.NDArray[np.float32],
    *,
    name: str,
    version: int,
    stream: str,
    config: TrainConfig,
    training_info: dict[str, Any] | None = None,
    created_at: str | None = None,
) -> TrainedModel:
    """Train on normal model inputs, quantize, and set the threshold on held-out normals."""
    model = train_autoencoder(x_train, x_calibration, config)
    rng = np.random.default_rng(config.seed)
    take = min(config.representative_rows, len(x_train))
    representative = x_train[rng.choice(len(x_train), size=take, replace=False)]
    width = spec.input_width
    int8_model = to_tflite(model, width, representative)
    float_model = to_tflite(model, width, None)
    input_spec, output_spec = _io_specs(int8_model)
    manifest = Manifest(
        name=name,
        version=version,
        stream=stream,
        created_at=created_at or dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        features=spec,
        score=ScoreSpec(
            kind=config.score_kind, threshold=0.0, calibration_quantile=config.calibration_quantile
        ),
        quantization="int8",
        input=input_spec,
        output=output_spec,
        architecture=[width, *config.hidden, width],
        reads_fields=spec.names,
        training={
            "train_rows": len(x_train),
            "calibration_rows": len(x_calibration),
            "config": _config_record(config),
            **(training_info or {}),
        },
        model_sha256=hashlib.sha256(int8_model).hexdigest(),
    )
    manifest = calibrated(manifest, int8_model, x_calibration, config)
    return TrainedModel(manifest, int8_model, float_model)


def calibrated(
    manifest: Manifest, int8_model: bytes, x_calibration: npt.NDArray[np.float32],
    config: TrainConfig,
) -> Manifest:  # fmt: skip
    """The manifest with its threshold set on the int8 model's scores of held-out normal
    inputs, scored as the manifest says (again after a change to how it scores)."""
    calibration_scores = Scorer(unsigned_bundle(manifest, int8_model)).score(x_calibration).scores
    quantiles = {str(q): float(np.quantile(calibration_scores, q)) for q in QUANTILES}
    quantile = float(np.quantile(calibration_scores, config.calibration_quantile))
    threshold = quantile * config.threshold_margin
    return manifest.model_copy(
        update={
            "score": ScoreSpec(
                kind=config.score_kind,
                threshold=threshold,
                calibration_quantile=config.calibration_quantile,
                threshold_margin=config.threshold_margin,
                calibration_quantiles=quantiles,
            )
        }
    )
