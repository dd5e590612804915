"""Process lifecycle: one stop event, signal handling and systemd notification."""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import sys
import threading
from types import FrameType
from typing import Protocol

log = logging.getLogger(__name__)


def install_stop_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT only set ``stop``; the service's loops notice it and wind down."""

    def _request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)


def sd_notify(state: str) -> bool:
    """Send ``state`` (e.g. ``READY=1``) to systemd; a no-op outside a notify service."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
        except OSError as exc:
            log.warning("systemd notify failed: %s", exc)
            return False
    return True


def watchdog_interval_s() -> float | None:
    """Half the systemd watchdog period, when one is configured for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2_000_000


class Service(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


# Network threads wait for the GIL at most this long while a worker computes (Python's
# default is 5 ms, which shows up directly as MQTT round-trip time).
SWITCH_INTERVAL_S = 0.001


def settle_runtime() -> None:
    """Once start-up is done: freeze what was built and hand the GIL over sooner.

    Start-up objects (modules, models) never die, so the collector stops walking them and
    full collections stay short instead of showing up as latency spikes.
    """
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def run_until_stopped(service: Service) -> int:
    """Start ``service``, feed the systemd watchdog, stop it on SIGTERM/SIGINT; exit code 0."""
    stop = threading.Event()
    install_stop_signals(stop)
    service.start()
    interval = watchdog_interval_s()
    while not stop.wait(interval or 1.0):
        if interval:
            sd_notify("WATCHDOG=1")
    service.stop()
    return 0
