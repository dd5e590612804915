"""``edgewatch-agent``: run the scoring service, check its config, score files, replay data."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from agent.settings import AgentSettings
from plumbing.cli import base_parser, dispatch, run_service


def cmd_run(args: argparse.Namespace) -> int:
    from agent.service import AgentService

    return run_service(AgentSettings, args.config, AgentService)


def cmd_score(args: argparse.Namespace) -> int:
    """Score a file offline through the same pipeline the service runs; print JSONL."""
    from agent.pipeline import Inbound, Limits, Pipeline, StreamModel
    from agent.replay import messages_from_file
    from models.bundle import load_bundle, load_trusted_keys
    from plumbing.events import Topics

    bundle = load_bundle(args.bundle, load_trusted_keys(args.trusted_keys))
    stream = args.stream or bundle.manifest.stream
    topics = Topics()
    pipeline = Pipeline(topics, Limits(contributions_top_k=args.top_k))
    pipeline.models[stream] = StreamModel(bundle, max_devices=100_000)
    # Each file is its own device (or devices, with --devices): a SKAB file is one machine.
    messages = [m for path in args.files for m in messages_from_file(path, devices=args.devices)]
    out = sys.stdout
    verdicts: dict[str, bool] = {}
    for start in range(0, len(messages), 512):
        chunk = messages[start : start + 512]
        batch = [Inbound(topics.event(m.device, "raw", stream), m.payload) for m in chunk]
        for outcome in pipeline.process(batch):
            document = outcome.document or {}
            if args.quality:
                if outcome.reason is None and not document.get("warming_up"):
                    verdicts[outcome.event_id] = outcome.anomaly
            else:
                out.write(json.dumps(document, separators=(",", ":")) + "\n")
    if args.quality:
        print(json.dumps(_quality(messages, verdicts), indent=2))
    return 0


def _quality(messages: list[Any], verdicts: dict[str, bool]) -> dict[str, Any]:
    """Event-level precision, recall and F1 of the scored, labelled events (not warming up)."""
    from models.metrics import at_threshold

    pairs = [(m.label, verdicts[m.event_id]) for m in messages
             if m.label is not None and m.event_id in verdicts]  # fmt: skip
    if not pairs:
        raise SystemExit("--quality: no labelled events were scored after warm-up")
    result = at_threshold([p[0] for p in pairs], [float(p[1]) for p in pairs], 0.5)
    keep = ("precision", "recall", "f1", "far", "mar", "confusion")
    return {"events": len(pairs), "anomalies": sum(p[0] for p in pairs),
            **{k: result[k] for k in keep}}  # fmt: skip


def _state_dir(directory: Path | None, section: str) -> Path | None:
    """A section's state_dir, or None after saying that its state lives in memory only."""
    if directory is None:
        print(f"{section}.state_dir is not set: the service keeps that state in memory only",
              file=sys.stderr)  # fmt: skip
    return directory


def cmd_baseline(args: argparse.Namespace) -> int:
    """Per-device baselines: ask the service to reset one, or show what is stored."""
    from agent.baselines import BaselineStore
    from plumbing.cli import require_settings

    settings = require_settings(AgentSettings, args.config)
    directory = _state_dir(settings.baselines.state_dir, "baselines")
    if directory is None:
        return 1
    store = BaselineStore(directory)
    if args.action == "reset":
        if not args.device:
            print("baseline reset needs --device", file=sys.stderr)
            return 2
        path = store.request_reset(args.device, args.stream)
        print(f"reset of {args.device!r} requested ({path}); the service applies it within "
              f"{settings.baselines.poll_s:g} s, or at its next start")  # fmt: skip
        return 0
    for stream in settings.streams:
        document = store.load(stream) or {"devices": {}}
        devices = document["devices"]
        shown = {d: devices[d] for d in devices if args.device in (None, d)}
        print(json.dumps({"stream": stream, "learned": len(devices), "devices": shown}))
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    """What the rollout store holds: per stream the versions in use and the kept bundles."""
    from agent.store import ModelStore
    from models.bundle import load_trusted_keys
    from plumbing.cli import require_settings

    settings = require_settings(AgentSettings, args.config)
    directory = _state_dir(settings.rollout.state_dir, "rollout")
    if directory is None:
        return 1
    store = ModelStore(directory, settings.rollout.keep_bundles,
                       load_trusted_keys(settings.trusted_keys))  # fmt: skip
    for stream in settings.streams:
        state = store.load_state(stream) or {}
        kept = []
        for entry in [state.get("active"), *state.get("previous", [])]:
            if entry:
                found = store.get(state["model"], entry["number"], entry["sha256"])
                kept.append({"version": entry["number"], "verified": found is not None})
        print(json.dumps({"stream": stream, **state, "bundles": kept}))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from agent.replay import messages_from_file
    from plumbing.events import Topics
    from plumbing.mqtt import MqttConnection
    from plumbing.settings import MqttSettings

    settings = MqttSettings(
        host=args.host, port=args.port, topic_prefix=args.prefix, session_expiry_s=0
    )
    topics = Topics(args.prefix)
    messages = [m for path in args.files for m in messages_from_file(path, devices=args.devices)]
    if args.limit:
        messages = messages[: args.limit]
    connection = MqttConnection(settings, f"edgewatch-replay-{time.time_ns()}", max_inflight=1000)
    if args.labels_out:
        args.labels_out.write_text("".join(
            json.dumps({"event_id": m.event_id, "label": m.label}) + "\n" for m in messages
        ))  # fmt: skip
    connection.start()
    started = time.perf_counter()
    connection.publish_all(
        ((topics.event(m.device, "raw", args.stream), m.payload) for m in messages), args.rate
    )
    elapsed = time.perf_counter() - started
    connection.stop()
    print(json.dumps({"published": len(messages), "seconds": round(elapsed, 3),
                      "msgs_per_s": round(len(messages) / elapsed, 1)}))  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    parser, sub = base_parser("edgewatch-agent", "Edge scoring service.")
    run = sub.add_parser("run", help="run the scoring service")
    run.add_argument("--config", type=Path, help="TOML configuration file")
    run.set_defaults(handler=cmd_run)

    score = sub.add_parser("score", help="score a CSV or JSONL file offline, print JSONL")
    score.add_argument("bundle", type=Path)
    score.add_argument("files", type=Path, nargs="+", help="CSV or JSONL; one device each")
    score.add_argument("--trusted-keys", type=Path, required=True)
    score.add_argument("--stream", help="stream name (default: the bundle's)")
    score.add_argument("--devices", type=int, default=1, help="rows go round-robin to N devices")
    score.add_argument("--top-k", type=int, default=3, help="contributions per event")
    score.add_argument("--quality", action="store_true",
                       help="precision/recall/F1 of labelled events after warm-up")  # fmt: skip
    score.set_defaults(handler=cmd_score)

    baseline = sub.add_parser("baseline", help="per-device baselines: reset one, or show")
    baseline.add_argument("action", choices=["reset", "show"])
    baseline.add_argument("--config", type=Path, help="the service's TOML configuration")
    baseline.add_argument("--device", help="device id (required for reset)")
    baseline.add_argument("--stream", help="only this stream (default: every stream)")
    baseline.set_defaults(handler=cmd_baseline)

    rollout = sub.add_parser("rollout", help="show the rollout state and kept bundles")
    rollout.add_argument("--config", type=Path, help="the service's TOML configuration")
    rollout.set_defaults(handler=cmd_rollout)

    replay = sub.add_parser("replay", help="publish data set rows as device messages")
    replay.add_argument("files", type=Path, nargs="+", help="CSV (credit card, SKAB) or JSONL")
    replay.add_argument("--stream", required=True, help="e.g. payments or sensors")
    replay.add_argument("--host", default="127.0.0.1")
    replay.add_argument("--port", type=int, default=1883)
    replay.add_argument("--prefix", default="edge")
    replay.add_argument("--rate", type=float, help="messages per second (default: max)")
    replay.add_argument("--devices", type=int, default=1)
    replay.add_argument("--limit", type=int)
    replay.add_argument("--labels-out", type=Path, help="write event_id -> label JSONL here")
    replay.set_defaults(handler=cmd_replay)

    return dispatch(parser.parse_args(argv), AgentSettings)


if __name__ == "__main__":
    sys.exit(main())
