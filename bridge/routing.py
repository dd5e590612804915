"""Which Kafka topic, key and headers an MQTT message gets; payload bytes pass unchanged."""

from __future__ import annotations

from dataclasses import dataclass

from paho.mqtt.client import topic_matches_sub
from pydantic import BaseModel, ConfigDict, Field

from plumbing.events import Topics, event_id_of, loads

MALFORMED_TOPIC = "malformed_topic"
MALFORMED_EVENT = "malformed_event"
NO_ROUTE = "no_route"
TOO_LARGE_FOR_KAFKA = "too_large_for_kafka"


class Route(BaseModel):
    """One rule: an MQTT filter relative to the topic prefix, and where its messages go."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    filter: str = Field(..., description="MQTT filter after the prefix, e.g. '+/raw/+'.")
    kind: str = Field(..., pattern=r"^[a-z]{1,32}$", description="raw, scored, alerts, ...")
    topic: str = Field(..., description="Kafka topic template: {device}, {stream}, {kind}.")
    key: str = Field("{device}", description="Kafka key template (order holds per key).")
    json_event: bool = Field(
        True, description="Payload must be a JSON object (checked; else dead-letter)."
    )


DEFAULT_ROUTES = (
    Route(filter="+/raw/+", kind="raw", topic="edge.raw.{stream}", json_event=False),
    Route(filter="+/scored/+", kind="scored", topic="edge.scored.{stream}"),
    Route(filter="+/alerts/+", kind="alerts", topic="edge.alerts"),
    Route(filter="+/deadletter/+", kind="deadletter", topic="edge.deadletter"),
    Route(filter="+/status/+", kind="status", topic="edge.status", key="{device}/{stream}"),
    Route(filter="+/rollout/+", kind="rollout", topic="edge.rollouts", key="{device}/{stream}"),
)


@dataclass(slots=True)
class Routed:
    """Where one message goes (or why it cannot go anywhere but the dead-letter topic)."""

    kind: str
    topic: str
    key: bytes
    headers: list[tuple[str, bytes]]
    event_id: str
    reject: str | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class _Target:
    """What a given MQTT topic resolves to; cached, since devices reuse their topics."""

    route: Route | None
    device: str
    kafka_topic: str
    key: bytes
    reject: str | None
    mqtt_header: tuple[str, bytes]


class Router:
    CACHE_LIMIT = 10_000

    def __init__(self, topics: Topics, routes: tuple[Route, ...], node_id: str) -> None:
        self.topics = topics
        self.routes = routes
        self.node = node_id.encode()
        self._node_header = ("node_id", self.node)
        self._filters = [f"{topics.prefix}/{r.filter}" for r in routes]
        self._cache: dict[str, _Target] = {}

    def subscriptions(self) -> list[str]:
        return list(self._filters)

    def _resolve(self, mqtt_topic: str) -> _Target:
        target = self._cache.get(mqtt_topic)
        if target is not None:
            return target
        parts = self.topics.parse(mqtt_topic)
        route = next(
            (r for r, f in zip(self.routes, self._filters, strict=True)
             if topic_matches_sub(f, mqtt_topic)),
            None,
        )  # fmt: skip
        if parts is None or route is None:
            device = parts.device if parts else "unknown"
            reason = MALFORMED_TOPIC if parts is None else NO_ROUTE
            target = _Target(None, device, "", device.encode(), reason,
                             ("mqtt_topic", mqtt_topic.encode()))  # fmt: skip
        else:
            values = {"device": parts.device, "stream": parts.stream, "kind": parts.kind}
            target = _Target(route, parts.device, route.topic.format(**values),
                             route.key.format(**values).encode(), None,
                             ("mqtt_topic", mqtt_topic.encode()))  # fmt: skip
        if len(self._cache) >= self.CACHE_LIMIT:
            self._cache.clear()
        self._cache[mqtt_topic] = target
        return target

    def route(self, mqtt_topic: str, payload: bytes) -> Routed:
        target = self._resolve(mqtt_topic)
        route = target.route
        document: object = None
        try:
            document = loads(payload)
        except (ValueError, RecursionError):
            document = None
        event_id = event_id_of(mqtt_topic, payload, document)
        if route is None:
            return Routed("deadletter", "", target.key, [], event_id, target.reject,
                          f"no route for MQTT topic {mqtt_topic!r}")  # fmt: skip
        headers = [target.mqtt_header, self._node_header, ("event_id", event_id.encode())]
        if route.json_event and not isinstance(document, dict):
            return Routed(
                "deadletter",
                target.kafka_topic,
                target.key,
                headers,
                event_id,
                MALFORMED_EVENT,
                f"{route.kind} payload is not a JSON object",
            )
        if isinstance(document, dict):
            model = document.get("model")
            if isinstance(model, dict) and "version" in model:
                headers.append(("model_version", str(model["version"]).encode()))
        return Routed(route.kind, target.kafka_topic, target.key, headers, event_id)
