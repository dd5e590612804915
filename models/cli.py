"""``edgewatch-models``: train, retrain, evaluate, benchmark, inspect, sign and publish bundles."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

from models import fleet, signing
from models.bundle import (
    BUNDLE_SUFFIX,
    BundleError,
    ScoreKind,
    generate_keypair,
    load_bundle,
    load_private_key,
    load_trusted_keys,
    read_unverified,
    sign_bundle,
)
from models.skab import add_unseen_command
from plumbing.errors import EdgewatchError

REPO_BUNDLES = Path(__file__).resolve().parent / "bundles"
DEV_PUBLIC_KEY = REPO_BUNDLES / "dev-signing-key.DEVELOPMENT-ONLY.pub.pem"
SCORE_KINDS = list(get_args(ScoreKind))


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """TensorFlow prints to stdout; keep stdout for our JSON."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, default=str))


def cmd_keygen(args: argparse.Namespace) -> int:
    args.out_dir.mkdir(parents=True, exist_ok=True)
    private = args.out_dir / f"{args.name}.key.pem"
    public = args.out_dir / f"{args.name}.pub.pem"
    kid = generate_keypair(private, public)
    print(f"key {kid}: private {private} (keep secret), public {public}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    data = args.bundle.read_bytes()
    manifest, model, signature = read_unverified(data)
    status = "not checked (no --trusted-keys)"
    if args.trusted_keys is not None:
        try:
            load_bundle(args.bundle, load_trusted_keys(args.trusted_keys))
            status = f"valid, signed by trusted key {signature.get('key_id')}"
        except BundleError as exc:
            status = f"INVALID: {exc}"
    summary = {
        "file": str(args.bundle),
        "bundle_sha256": hashlib.sha256(data).hexdigest(),
        "name": manifest.name,
        "version": manifest.version,
        "stream": manifest.stream,
        "created_at": manifest.created_at,
        "reads_fields": manifest.reads_fields,
        "window": manifest.features.window,
        "architecture": manifest.architecture,
        "quantization": manifest.quantization,
        "score": manifest.score.model_dump(),
        "model_bytes": len(model),
        "model_sha256": manifest.model_sha256,
        "metrics": manifest.metrics,
        "signature": {"key_id": signature.get("key_id"), "status": status},
    }
    if args.json:
        _print_json(summary)
    else:
        for key, value in summary.items():
            print(f"{key:>14}: {value}")
    return 0 if not status.startswith("INVALID") else 1


def _train_config(args: argparse.Namespace) -> Any:
    from models.training import TrainConfig

    config = TrainConfig(seed=args.seed, progress=not args.quiet)
    if args.epochs is not None:
        config.epochs = args.epochs
    if args.hidden:
        config.hidden = tuple(int(v) for v in args.hidden.split(","))
        config.activations = tuple(args.activations.split(","))
    if args.quantile is not None:
        config.calibration_quantile = args.quantile
    config.score_kind = args.score_kind
    return config


def cmd_train(args: argparse.Namespace) -> int:
    from models import recipes
    from models.datasets import CREDITCARD_FEATURES, read_table, write_rows

    table = read_table(args.data)
    config = _train_config(args)
    is_creditcard = set(CREDITCARD_FEATURES) <= set(table.numeric)
    with _stdout_to_stderr():
        if args.features is None and is_creditcard:
            result = recipes.creditcard(table, config, version=args.version)
        else:
            label = table.label_column(args.label)
            features = args.features.split(",") if args.features else table.feature_columns(label)
            result = recipes.train_on_table(
                table,
                features=features,
                label=label,
                name=args.name or args.data.stem,
                stream=args.stream,
                version=args.version,
                config=config,
                log1p=tuple(args.log1p.split(",")) if args.log1p else (),
            )
    trained = result.trained
    if args.eval_out is not None:
        write_rows(args.data, result.eval_rows, args.eval_out)
    if args.float_out is not None:
        args.float_out.write_bytes(trained.float_model)
    bundle_bytes = sign_bundle(trained.manifest, trained.int8_model, load_private_key(args.key))
    args.out.write_bytes(bundle_bytes)
    print(f"wrote {args.out} ({trained.manifest.name} v{trained.manifest.version}, "
          f"threshold {trained.manifest.score.threshold:.5f})")  # fmt: skip
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from models.evaluation import evaluate
    from models.training import TrainedModel

    bundle = load_bundle(args.bundle, load_trusted_keys(args.trusted_keys))
    float_bundle = None
    if args.float_model is not None:
        float_bundle = TrainedModel(
            bundle.manifest, bundle.model, args.float_model.read_bytes()
        ).float_bundle()
    report = evaluate(bundle, args.data, float_bundle, label=args.label)
    if args.json:
        _print_json(report)
    else:
        _print_report(report)
    return 0


def _print_report(report: dict[str, Any]) -> None:
    columns = ["roc_auc", "pr_auc", "precision", "recall", "f1"]
    print(f"rows {report['rows']}, anomalies {report['positives']}, "
          f"threshold {report['threshold']:.5f}")  # fmt: skip
    print(f"{'model':<8}" + "".join(f"{c:>10}" for c in columns))
    rows = [("int8", report)] + ([("float", report["float"])] if "float" in report else [])
    for name, values in rows:
        print(f"{name:<8}" + "".join(f"{values[c]:>10.4f}" for c in columns))
    print(f"confusion: {report['confusion']}")


def cmd_skab(args: argparse.Namespace) -> int:
    from models.skab import PUBLISHED_F1, SkabOptions, run_benchmark, with_options

    options = SkabOptions()
    changes = {"window": args.window, "score_kind": args.score_kind,
               "scale_floor": args.scale_floor, "threshold_margin": args.margin}  # fmt: skip
    options = with_options(options, **{k: v for k, v in changes.items() if v is not None})
    with _stdout_to_stderr():
        result = run_benchmark(args.data, options)
    if args.json:
        _print_json(result)
        return 0
    print(f"SKAB outlier detection, {result['files']} files, {result['test_points']} test points")
    print(f"{'method':<28}{'F1':>6}")
    print(f"{'edgewatch int8 AE (this run)':<28}{result['f1']:>6.2f}   "
          f"FAR {result['far']:.3f}  MAR {result['mar']:.3f}")  # fmt: skip
    for method, f1 in PUBLISHED_F1.items():
        print(f"{method + ' (published)':<28}{f1:>6.2f}")
    return 0


def cmd_build_bundles(args: argparse.Namespace) -> int:
    from models.shipped import build_shipped_bundles

    with _stdout_to_stderr():
        written = build_shipped_bundles(args.datasets, args.key, args.out_dir)
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from models.publish import publish_bundle
    from plumbing.settings import KafkaSettings

    kafka = KafkaSettings(bootstrap_servers=args.bootstrap)
    publish_bundle(args.bundle, kafka, args.topic, load_trusted_keys(args.trusted_keys))
    print(f"published {args.bundle} to {args.topic}")
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from models.retrain import parse_time, run_retrain
    from models.retrain_settings import RetrainConfig
    from plumbing.cli import require_settings

    config = require_settings(RetrainConfig, args.config)
    with _stdout_to_stderr():
        result = run_retrain(
            config,
            args.stream,
            data=args.data,
            start=parse_time(args.start) if args.start else None,
            end=parse_time(args.end) if args.end else None,
            dry_run=args.dry_run,
            publish=not args.no_publish,
            champion_path=args.champion,
            report_dir=args.report_dir,
            progress=not args.quiet,
        )
    if args.json:
        _print_json(result.document)
    for rule in result.verdict.rules:
        print(f"  {'pass' if rule.passed else 'FAIL'}  {rule.detail}")
    if not result.passed:
        failed = ", ".join(rule.name for rule in result.verdict.failures)
        print(f"refused by the gate ({failed}): nothing published; report in {result.report_dir}")
        return 2
    if result.signed is None:
        print(f"passed the gate (dry run: nothing signed or published); report in "
              f"{result.report_dir}")  # fmt: skip
    elif result.published is None:
        print(f"passed the gate; signed {result.signed} (version {result.version}), "
              "not published")  # fmt: skip
    else:
        print(f"published {result.document['model']} version {result.version} to "
              f"{config.retrain.models_topic}; report in {result.report_dir}")  # fmt: skip
    return 0


def _add_retrain_parser(sub: Any) -> None:
    retrain = sub.add_parser(
        "retrain", help="retrain from train.{stream}, gate against the champion, publish"
    )
    retrain.add_argument("--stream", required=True, help="stream name, e.g. payments")
    retrain.add_argument("--config", type=Path, help="central.toml ([kafka], [retrain])")
    retrain.add_argument("--from", dest="start", help="oldest event time (ISO 8601 or epoch s)")
    retrain.add_argument("--to", dest="end", help="event time to stop before (exclusive)")
    retrain.add_argument("--dry-run", action="store_true", help="train and gate; never publish")
    retrain.add_argument("--no-publish", action="store_true",
                         help="sign a passing challenger into the report directory, publish "
                         "nothing (review or stage it first)")  # fmt: skip
    retrain.add_argument("--data", type=Path, help="CSV or Parquet rows instead of the topic")
    retrain.add_argument("--champion", type=Path, help="champion bundle instead of edge.models")
    retrain.add_argument("--report-dir", type=Path, help="report directory (default: new one)")
    retrain.add_argument("--quiet", action="store_true", help="no progress output")
    retrain.add_argument("--json", action="store_true", help="print report.json too")
    retrain.set_defaults(run=cmd_retrain)


def _add_train_parser(sub: Any) -> None:
    train = sub.add_parser("train", help="train, quantize, calibrate and sign a bundle")
    train.add_argument("--data", type=Path, required=True, help="CSV with named columns")
    train.add_argument("--key", type=Path, required=True, help="Ed25519 private key (PEM)")
    train.add_argument("--out", type=Path, required=True, help=f"bundle file ({BUNDLE_SUFFIX})")
    train.add_argument("--features", help="comma-separated columns (default: all numeric)")
    train.add_argument("--label", help="label column, 1 = anomaly (default: Class/anomaly)")
    train.add_argument("--log1p", help="comma-separated heavy-tailed columns to log1p")
    train.add_argument("--name", help="model name (default: the file's stem)")
    train.add_argument("--stream", default="payments")
    train.add_argument("--version", type=int, default=1)
    train.add_argument("--epochs", type=int)
    train.add_argument("--hidden", help="hidden layer sizes, e.g. 14,7,7")
    train.add_argument("--activations", default="tanh,relu,tanh")
    train.add_argument("--quantile", type=float, help="calibration quantile for the threshold")
    train.add_argument("--score-kind", choices=SCORE_KINDS, default="mse",
                       help="max_feature_mse: the worst feature's error, not the mean")  # fmt: skip
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--eval-out", type=Path, help="write the held-out evaluation rows here")
    train.add_argument("--float-out", type=Path, help="write the float32 TFLite model here")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=cmd_train)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgewatch-models", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    keygen = sub.add_parser("keygen", help="make an Ed25519 signing key pair")
    keygen.add_argument("--out-dir", type=Path, default=Path("."))
    keygen.add_argument("--name", default="signing")
    keygen.set_defaults(run=cmd_keygen)

    inspect = sub.add_parser("inspect", help="show a bundle's manifest and signature status")
    inspect.add_argument("bundle", type=Path)
    inspect.add_argument("--trusted-keys", type=Path, help="PEM file or directory of keys")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(run=cmd_inspect)

    _add_train_parser(sub)
    _add_retrain_parser(sub)

    evaluate = sub.add_parser("evaluate", help="metrics of a bundle on labelled data")
    evaluate.add_argument("bundle", type=Path)
    evaluate.add_argument("--data", type=Path, required=True)
    evaluate.add_argument("--label")
    evaluate.add_argument("--float-model", type=Path, help="float TFLite for a side-by-side")
    evaluate.add_argument("--trusted-keys", type=Path, default=DEV_PUBLIC_KEY)
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(run=cmd_evaluate)

    skab = sub.add_parser("skab-benchmark", help="the SKAB protocol with int8 models")
    skab.add_argument("--data", type=Path, required=True, help="SKAB folder (valve1/, other/)")
    skab.add_argument("--window", type=int)
    skab.add_argument("--score-kind", choices=SCORE_KINDS)
    skab.add_argument("--scale-floor", type=float, help="scale >= this x |center| per channel")
    skab.add_argument("--margin", type=float, help="threshold = margin x calibration quantile")
    skab.add_argument("--json", action="store_true")
    skab.set_defaults(run=cmd_skab)

    build = sub.add_parser("build-bundles", help="regenerate models/bundles reproducibly")
    build.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    build.add_argument(
        "--key", type=Path, default=Path("deploy/dev/keys/dev-signing-key.DEVELOPMENT-ONLY.pem")
    )
    build.add_argument("--out-dir", type=Path, default=REPO_BUNDLES)
    build.set_defaults(run=cmd_build_bundles)

    publish = sub.add_parser("publish", help="publish a bundle to the fleet via Kafka")
    publish.add_argument("bundle", type=Path)
    publish.add_argument("--bootstrap", default="127.0.0.1:9092")
    publish.add_argument("--topic", default="edge.models")
    publish.add_argument("--trusted-keys", type=Path, default=DEV_PUBLIC_KEY)
    publish.set_defaults(run=cmd_publish)
    fleet.add_parsers(sub)  # fleet, serve-version
    signing.add_commands(sub)
    add_unseen_command(sub)  # skab-unseen
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (EdgewatchError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
