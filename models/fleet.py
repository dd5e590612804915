"""The fleet's model rollout, centrally: ``edgewatch-models fleet``, ``stage``, ``serve-version``.

``fleet`` reads ``{prefix}.status`` (the boxes' retained statuses, forwarded by their
bridges; compacted, key ``{node}/{service}``) and ``{prefix}.rollouts`` (every rollout
transition a box announced, with the figures that decided it) from their beginning to the
end they had when reading started (:func:`models.kafka_read.read_to_end`), and folds them
into one row per box: per stream the active, candidate and previous versions, the rollout
state, the last transition and why, and when the box was last heard of. The folding
(:func:`fleet_view`) has no I/O; the newest of a box's status and transitions wins, by the
time the box stamped on it.

``stage`` re-signs a bundle with a ``rollout`` section: the cohort it is released to (node
ids, or a percentage by stable hash of the node id) and overrides of the boxes' rules.

``serve-version`` signs a "serve version V of model M" instruction
(:mod:`models.instructions`) and publishes it on ``{prefix}.models`` under the key
``{model}--serve``; every bridge republishes it retained, every box verifies it.

Both read ``central.toml`` through :class:`models.central.settings.CentralSettings`:
``[kafka]`` for the cluster, ``[central] topic_prefix`` for the topic names (``edge`` by
default) and ``[retrain] models_topic`` if set; no section of their own.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from models.central.settings import CentralSettings

STALE_AFTER_S = 120.0  # a box silent longer than this is marked stale


def topic(config: CentralSettings, name: str) -> str:
    """``{central.topic_prefix}.{name}``: the topics the bridges write."""
    return f"{config.central.topic_prefix}.{name}"


def models_topic(config: CentralSettings) -> str:
    """Where bundles (and instructions) go: ``[retrain] models_topic``, else ``{prefix}.models``."""
    return str(config.retrain.get("models_topic") or topic(config, "models"))


@dataclass
class StreamView:
    model: str | None = None
    state: str = "serving"
    active: int | None = None
    candidate: int | None = None
    previous: list[int] = field(default_factory=list)
    last: dict[str, Any] | None = None  # kind, from_version, to_version, reason, at, figures
    at: float = 0.0  # the box's time of what this view was taken from


@dataclass
class BoxView:
    node: str
    agent: str = "unknown"  # online / offline, from the agent's status
    last_seen: float = 0.0
    streams: dict[str, StreamView] = field(default_factory=dict)


def fleet_view(
    statuses: Iterable[tuple[float, dict[str, Any]]],
    transitions: Iterable[tuple[float, dict[str, Any]]],
) -> list[BoxView]:
    """One view per node from (Kafka timestamp in s, document) pairs, sorted by node."""
    boxes: dict[str, BoxView] = {}

    def box(node: str, seen: float) -> BoxView:
        view = boxes.setdefault(node, BoxView(node))
        view.last_seen = max(view.last_seen, seen)
        return view

    for stamp, doc in statuses:
        node = doc.get("node")
        if not isinstance(node, str):
            continue
        at = float(doc.get("at") or stamp)
        view = box(node, max(at, stamp))
        if doc.get("service") != "agent":
            continue
        view.agent = str(doc.get("state", "unknown"))
        for stream, info in (doc.get("rollout") or {}).items():
            _update(view, stream, info, at, info.get("last_transition"))
        for stream, info in (doc.get("models") or {}).items():  # agents without rollout
            if stream not in view.streams:
                view.streams[stream] = StreamView(info.get("name"), active=info.get("version"))
    for stamp, doc in transitions:
        node, stream = doc.get("node"), doc.get("stream")
        if not isinstance(node, str) or not isinstance(stream, str):
            continue
        at = float(doc.get("at") or stamp)
        last = {
            k: doc.get(k) for k in ("kind", "from_version", "to_version", "reason", "at", "figures")
        }
        _update(box(node, max(at, stamp)), stream, doc, at, last)
    return [boxes[node] for node in sorted(boxes)]


def _update(
    view: BoxView, stream: str, info: dict[str, Any], at: float, last: dict[str, Any] | None
) -> None:
    """The newer snapshot of versions and state wins; so does the newer last transition
    (the transition record itself over the status' copy of it, which has no figures)."""
    current = view.streams.setdefault(stream, StreamView())
    if at >= current.at:
        current.model = info.get("model", current.model)
        current.state = str(info.get("state", current.state))
        current.active, current.candidate = info.get("active"), info.get("candidate")
        current.previous = list(info.get("previous") or [])
        current.at = at
    if last is None:
        return
    when, known = last.get("at") or 0, (current.last or {}).get("at") or 0
    if when > known or (when == known and "figures" in last):
        current.last = last


# -- rendering -----------------------------------------------------------------------------------
def _when(at: float, pattern: str = "%Y-%m-%d %H:%M:%SZ") -> str:
    return time.strftime(pattern, time.gmtime(at)) if at else "-"


def _v(number: int | None) -> str:
    return "-" if number is None else f"v{number}"


def _figures(figures: dict[str, Any] | None) -> str:
    if not figures or "events" not in figures:
        return ""
    parts = [
        f"{figures['events']} events",
        f"alerts {figures.get('new_alert_rate')} vs {figures.get('old_alert_rate')}",
    ]
    if figures.get("rank_correlation") is not None:
        parts.append(f"rank {figures['rank_correlation']}")
    if figures.get("p95_batch_ms") is not None:
        parts.append(f"p95 {figures['p95_batch_ms']} ms")
    return " [" + ", ".join(parts) + "]"


def describe_stream(stream: str, view: StreamView) -> str:
    """``stream=model active/candidate/previous state; last transition: why [figures]``."""
    previous = ",".join(_v(v) for v in view.previous) or "-"
    text = f"{stream}={view.model or '?'} {_v(view.active)}/{_v(view.candidate)}/{previous}"
    text += f" {view.state}"
    last = view.last
    if last:
        start, end = last.get("from_version"), last.get("to_version")
        change = _v(end) if start is None else f"{_v(start)}->{_v(end)}"
        text += (
            f"; {last.get('kind')} {change} {_when(last.get('at') or 0, '%H:%M:%SZ')}: "
            f"{last.get('reason')}{_figures(last.get('figures'))}"
        )
    return text


HEADER = "STREAMS: stream=model active/candidate/previous state; last transition: why [figures]"


def render(boxes: list[BoxView], now: float, stale_after_s: float = STALE_AFTER_S) -> str:
    """One line per box: node, agent state ('?': not heard of lately), last seen, streams."""
    width = max([len("NODE"), *(len(b.node) for b in boxes)])
    lines = [f"{'NODE':<{width}}  {'AGENT':<8} {'LAST SEEN':<21} {HEADER}"]
    for b in boxes:
        agent = b.agent if now - b.last_seen <= stale_after_s else f"{b.agent}?"
        streams = " | ".join(describe_stream(s, v) for s, v in sorted(b.streams.items()))
        lines.append(f"{b.node:<{width}}  {agent:<8} {_when(b.last_seen):<21} {streams or '-'}")
    return "\n".join(lines)


# -- commands ------------------------------------------------------------------------------------
def read_fleet(config: CentralSettings, timeout_s: float = 30.0) -> list[BoxView]:
    from models.kafka_read import read_to_end

    def documents(topic: str) -> list[tuple[float, dict[str, Any]]]:
        out = []
        for record in read_to_end(config.kafka, topic, timeout_s):
            try:
                doc = json.loads(record.value or b"")
            except ValueError:
                continue
            if isinstance(doc, dict):
                out.append((record.timestamp_ms / 1000, doc))
        return out

    return fleet_view(documents(topic(config, "status")), documents(topic(config, "rollouts")))


def cmd_fleet(args: argparse.Namespace) -> int:
    from plumbing.cli import require_settings

    config = require_settings(CentralSettings, args.config)
    boxes = read_fleet(config, args.timeout)
    if args.json:
        print(json.dumps([asdict(b) for b in boxes], indent=2))
    else:
        print(render(boxes, time.time(), args.stale_after))
    return 0


def cmd_serve_version(args: argparse.Namespace) -> int:
    from models.bundle import load_private_key
    from models.instructions import instruction_key, new_instruction, sign_instruction
    from models.publish import produce_durably
    from plumbing.cli import require_settings

    config = require_settings(CentralSettings, args.config)
    target = models_topic(config)
    nodes = tuple(args.nodes.split(",")) if args.nodes else None
    instruction = new_instruction(args.model, args.version, reason=args.reason, nodes=nodes)
    data = sign_instruction(instruction, load_private_key(args.key))
    produce_durably(config.kafka, target, instruction_key(args.model), data)
    print(
        f"published: serve {args.model} v{args.version} on {', '.join(nodes or ['every box'])}"
        f" ({target}, key {instruction_key(args.model)})"
    )
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    """Re-sign a bundle with a rollout section: its cohort and rule overrides."""
    from models.bundle import (
        Cohort,
        Manifest,
        RolloutRules,
        RolloutSpec,
        load_private_key,
        load_trusted_keys,
        sign_bundle,
        verify_bundle,
    )

    bundle = verify_bundle(args.bundle.read_bytes(), load_trusted_keys(args.trusted_keys))
    rules = dict(item.split("=", 1) for item in args.rule)
    nodes = tuple(args.nodes.split(",")) if args.nodes else None
    cohort = (
        Cohort(nodes=nodes, percent=args.percent) if nodes or args.percent is not None else None
    )
    document = bundle.manifest.model_dump(mode="json")
    document["rollout"] = RolloutSpec(cohort=cohort, rules=RolloutRules(**rules)).model_dump()
    if args.version is not None:
        document["version"] = args.version
    manifest = Manifest.model_validate(document)
    args.out.write_bytes(sign_bundle(manifest, bundle.model, load_private_key(args.key)))
    staged = json.loads(manifest.to_bytes())["rollout"]
    print(f"wrote {args.out} ({manifest.name} v{manifest.version}, rollout {staged})")
    return 0


def add_parsers(sub: Any) -> None:
    """The ``fleet``, ``serve-version`` and ``stage`` subcommands of ``edgewatch-models``."""
    fleet = sub.add_parser("fleet", help="per box: model versions, rollout state, last change")
    fleet.add_argument("--config", type=Path, help="central.toml ([kafka], [central])")
    fleet.add_argument("--json", action="store_true")
    fleet.add_argument("--timeout", type=float, default=30.0, help="Kafka read limit, seconds")
    fleet.add_argument(
        "--stale-after",
        type=float,
        default=STALE_AFTER_S,
        help="mark boxes not heard of for this many seconds with '?'",
    )
    fleet.set_defaults(run=cmd_fleet)

    serve = sub.add_parser("serve-version", help="sign and publish 'serve version V of model M'")
    serve.add_argument("--config", type=Path, help="central.toml ([kafka], [central])")
    serve.add_argument("--model", required=True)
    serve.add_argument("--version", type=int, required=True, help="older versions allowed")
    serve.add_argument("--key", type=Path, required=True, help="Ed25519 private key (PEM)")
    serve.add_argument("--nodes", help="comma-separated node ids (default: every box)")
    serve.add_argument("--reason", default="", help="shown in the fleet view")
    serve.set_defaults(run=cmd_serve_version)

    stage = sub.add_parser("stage", help="re-sign a bundle for a cohort, with rule overrides")
    stage.add_argument("bundle", type=Path)
    stage.add_argument("--out", type=Path, required=True)
    stage.add_argument("--key", type=Path, required=True, help="Ed25519 private key (PEM)")
    stage.add_argument("--trusted-keys", type=Path, required=True, help="keys it verifies with")
    stage.add_argument("--nodes", help="comma-separated node ids of the cohort")
    stage.add_argument("--percent", type=float, help="share of the fleet (stable hash of node id)")
    stage.add_argument(
        "--rule",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="rollout rule override, e.g. shadow_events=5000 (repeatable)",
    )
    stage.add_argument("--version", type=int, help="a new version number (default: keep)")
    stage.set_defaults(run=cmd_stage)
