"""Prometheus endpoint on a local port; each service declares its own metrics."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


def serve_metrics(registry: CollectorRegistry, host: str, port: int | None) -> None:
    """Expose ``registry`` on http://host:port/metrics; port None leaves it off."""
    if port is None:
        return
    start_http_server(port, addr=host, registry=registry)
    log.info("metrics on http://%s:%d/metrics", host, port)
