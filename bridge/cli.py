"""``edgewatch-bridge``: run the forwarder, check its config, inspect or drain the spool."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

from bridge.settings import BridgeSettings
from plumbing.cli import base_parser, dispatch, require_settings, run_service
from plumbing.errors import EdgewatchError


def cmd_run(args: argparse.Namespace) -> int:
    from bridge.service import BridgeService

    return run_service(BridgeSettings, args.config, BridgeService)


def _spool(settings: BridgeSettings):  # type: ignore[no-untyped-def]
    from bridge.spool import Spool

    s = settings.spool
    if not s.path.exists():
        raise EdgewatchError(f"no spool at {s.path}")
    return Spool(s.path, max_bytes=s.max_bytes, max_age_s=s.max_age_s, policy=s.overflow)


def cmd_spool(args: argparse.Namespace) -> int:
    settings = require_settings(BridgeSettings, args.config)
    spool = _spool(settings)
    if args.action == "stats":
        print(json.dumps(spool.stats(), indent=2))
    elif args.action == "dump":
        for record in spool.read_after(0, args.limit):
            print(json.dumps({
                "seq": record.seq, "kind": record.kind, "topic": record.topic,
                "key": (record.key or b"").decode("utf-8", "replace"),
                "headers": {k: v.decode("utf-8", "replace") for k, v in record.headers},
                "created": record.created,
                "value_b64": base64.b64encode(record.value).decode(),
            }))  # fmt: skip
    else:
        return _drain(settings, spool, args.timeout)
    return 0


def _drain(settings: BridgeSettings, spool: object, timeout_s: float) -> int:
    """Send everything in the spool to Kafka now (with the service stopped)."""
    from bridge.forwarder import Backoff, Forwarder
    from bridge.metrics import BridgeMetrics
    from plumbing.kafka import producer_config

    rows = spool.rows  # type: ignore[attr-defined]
    config = producer_config(settings.kafka, f"edgewatch-bridge-drain-{settings.node_id}",
                             **{"message.timeout.ms": int(timeout_s * 1000)})  # fmt: skip
    rejected: list[str] = []
    forwarder = Forwarder(
        spool, config, BridgeMetrics(), inflight_max=settings.inflight_max,  # type: ignore[arg-type]
        inflight_max_bytes=settings.inflight_max_bytes,
        probe=Backoff(settings.probe_min_s, settings.probe_max_s),
        on_rejected=lambda record, error: rejected.append(f"seq {record.seq}: {error.str()}"),
    )  # fmt: skip
    done = forwarder.flush_all(timeout_s)
    print(json.dumps({"drained": rows - spool.rows, "left": spool.rows,  # type: ignore[attr-defined]
                      "rejected": rejected[:20]}))  # fmt: skip
    return 0 if done and not rejected else 1


def main(argv: list[str] | None = None) -> int:
    parser, sub = base_parser("edgewatch-bridge", "MQTT → Kafka forwarder with a durable spool.")
    run = sub.add_parser("run", help="run the bridge")
    run.add_argument("--config", type=Path, help="TOML configuration file")
    run.set_defaults(handler=cmd_run)
    spool = sub.add_parser("spool", help="operate on the spool (stop the service first for drain)")
    spool.add_argument("action", choices=["stats", "dump", "drain"])
    spool.add_argument("--config", type=Path, help="TOML configuration file")
    spool.add_argument("--limit", type=int, default=100, help="rows to dump")
    spool.add_argument("--timeout", type=float, default=120.0, help="drain time limit (s)")
    spool.set_defaults(handler=cmd_spool)
    return dispatch(parser.parse_args(argv), BridgeSettings)


if __name__ == "__main__":
    sys.exit(main())
