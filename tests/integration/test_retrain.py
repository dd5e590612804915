"""Retraining against the real Kafka: a better model is published as champion + 1, a worse one
is refused by the gate and nothing reaches edge.models."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import Producer

from models.bundle import load_private_key, load_trusted_keys, sign_bundle, verify_bundle
from models.datasets import read_table
from models.kafka_read import read_to_end
from models.publish import publish_bundle
from models.retrain import load_rows, run_retrain, train_challenger
from models.retrain_settings import RetrainConfig
from plumbing.settings import KafkaSettings
from tests.helpers import make_keys

pytestmark = pytest.mark.broker

FEATURES = [f"V{i}" for i in range(1, 29)] + ["Amount"]
# Fields that carry little of the fraud signal: a challenger made worse on purpose.
NOISE_FEATURES = ["V13", "V15", "V22", "V24", "V25", "V26"]
EPOCH = 1_764_460_800.0  # 2025-11-30T00:00:00Z: rows' ts = EPOCH + the file's Time


def fill_train_topic(bootstrap: str, topic: str, source: Path) -> int:
    """train.payments rows as the preprocess job writes them (labelled, no personal fields)."""
    table = read_table(source)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 20})
    count = len(table)
    for i in range(count):
        amount = float(table.numeric["Amount"][i])
        ts = EPOCH + float(table.numeric["Time"][i])
        row = {
            "event_id": f"creditcard-{i}",
            "device": f"terminal-{i % 16}",
            "ts": ts,
            "label": int(table.numeric["Class"][i]),
            "hour_of_day": int(ts // 3600 % 24),
            "log_amount": math.log1p(amount),
            "card_last4": "4242",
            **{name: float(table.numeric[name][i]) for name in FEATURES},
        }
        producer.produce(topic, key=row["device"].encode(), value=json.dumps(row).encode())
        if i % 1000 == 0:
            producer.poll(0)
    # A duplicate delivery and a malformed record: dropped, never trained on.
    producer.produce(topic, value=json.dumps(row).encode())
    producer.produce(topic, value=b"not json")
    assert producer.flush(30) == 0
    return count


def central_toml(path: Path, kafka: str, topics: dict[str, str], keys: tuple[Path, Path], *,
                 features: list[str], epochs: int = 5) -> Path:  # fmt: skip
    private, public = keys
    hidden = "[14, 7, 7]" if len(features) > 10 else "[3]"
    activations = '["tanh", "relu", "tanh"]' if len(features) > 10 else '["tanh"]'
    path.write_text(
        f'[kafka]\nbootstrap_servers = "{kafka}"\n'
        f'[retrain]\ntrain_topic = "{topics["train"]}"\nmodels_topic = "{topics["models"]}"\n'
        f'trusted_keys = "{public}"\nsigning_key_file = "{private}"\n'
        f'report_dir = "{path.parent / "reports"}"\n'
        f'[retrain.streams.payments]\nmodel = "payments-fraud"\nfeatures = {json.dumps(features)}\n'
        f"log1p = {json.dumps(['Amount'] if 'Amount' in features else [])}\n"
        f"hidden = {hidden}\nactivations = {activations}\nepochs = {epochs}\npatience = 2\n"
    )
    return path


def test_retrain_publishes_champion_plus_one_and_refuses_a_worse_challenger(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: object, datasets: Path
) -> None:
    topics = {"train": kafka_topic("train.payments"), "models": kafka_topic("models")}  # type: ignore[operator]
    keys = make_keys(tmp_path / "keys", "production")
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    rows_in = fill_train_topic(
        kafka_bootstrap, topics["train"], datasets / "creditcard" / "creditcard_head.csv"
    )
    good = RetrainConfig.load(
        central_toml(tmp_path / "good.toml", kafka_bootstrap, topics, keys, features=FEATURES)
    )
    worse = central_toml(tmp_path / "worse.toml", kafka_bootstrap, topics, keys,
                         features=NOISE_FEATURES, epochs=2)  # fmt: skip

    # The model in production: version 4, a weak one (trained on the noise fields), on the topic.
    weak = RetrainConfig.load(worse)
    rows = load_rows(weak, "payments", NOISE_FEATURES)
    assert len(rows) == rows_in  # the duplicate and the malformed record are gone
    assert rows.source["duplicates"] == 1
    assert rows.source["malformed"] == 1
    champion = train_challenger(weak, "payments", rows, version=4, progress=False).trained
    path = tmp_path / "champion.ewb"
    path.write_bytes(sign_bundle(champion.manifest, champion.int8_model, load_private_key(keys[0])))
    publish_bundle(path, kafka, topics["models"], load_trusted_keys(keys[1]))

    # A better challenger passes the gate and is published as version 5.
    result = run_retrain(good, "payments", progress=False, report_dir=tmp_path / "report-good")
    assert result.passed, [r.detail for r in result.verdict.failures]
    assert result.version == 5
    report = json.loads((tmp_path / "report-good" / "report.json").read_text())
    assert report["champion"]["version"] == 4
    assert report["published"]["version"] == 5
    assert {"roc.png", "pr.png", "scores.png"} <= {
        p.name for p in (tmp_path / "report-good").iterdir()
    }
    split = report["split"]
    assert split["train_span"][1] <= split["evaluation_span"][0]  # split by time
    assert split["evaluation_anomalies"] > 0
    records = read_to_end(kafka, topics["models"])
    assert len(records) == 2
    published = verify_bundle(records[-1].value or b"", load_trusted_keys(keys[1]))
    assert records[-1].key == b"payments-fraud"
    assert published.manifest.version == 5
    # The bundle maps the raw payload the agent sees: no train-only column among its inputs.
    assert published.manifest.features.names == FEATURES
    assert published.manifest.features.fields[-1].transform == "log1p"
    assert published.manifest.metrics["roc_auc"] >= report["champion"]["figures"]["roc_auc"]

    # A challenger made worse on purpose (noise fields) is refused: exit non-zero, each failed
    # rule named with both figures, a report written, and nothing produced to edge.models.
    refused = subprocess.run(
        [sys.executable, "-m", "models.cli", "retrain", "--stream", "payments", "--config",
         str(worse), "--quiet", "--report-dir", str(tmp_path / "report-worse")],
        check=False, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "refused by the gate" in refused.stdout
    failed = [line for line in refused.stdout.splitlines() if line.strip().startswith("FAIL")]
    assert any("roc_auc: challenger" in line and "champion" in line for line in failed), (
        refused.stdout
    )
    worse_report = json.loads((tmp_path / "report-worse" / "report.json").read_text())
    assert worse_report["published"] is None
    assert worse_report["champion"]["version"] == 5
    assert not worse_report["gate"]["passed"]
    assert len(read_to_end(kafka, topics["models"])) == 2  # nothing reached edge.models
