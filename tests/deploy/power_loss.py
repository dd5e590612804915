"""What ``kill -9`` of Mosquitto loses: messages it PUBACKed that never reach the subscriber.

Mosquitto keeps sessions and queued QoS 1 messages in memory and writes them to its
persistence file only every ``autosave_interval`` seconds (or, with ``autosave_on_changes``,
every that many changes). A power cut loses what changed since the last write. This
measures it with the shipped files (Debian's main config + ``deploy/mosquitto``), changing
only the autosave lines:

- a device publishes numbered QoS 1 messages at a fixed rate and records every PUBACK
  (a PUBACK is the broker taking responsibility: the device forgets the message);
- the bridge's persistent session (``edgewatch-bridge``, QoS 1) is either connected and
  keeping up (``up``) or away, its session queueing on the broker (``away``);
- Mosquitto is killed with SIGKILL mid-stream, restarted on the same files, and the bridge
  reconnects to its session and drains it.

Lost = acknowledged by the broker and never received. The window is the time between the
first lost message's publish and the kill.

    .venv/bin/python tests/deploy/power_loss.py --mode away --autosave-interval 30
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.deploy.box import MOSQUITTO, DebianMosquitto


def autosave_conf(interval: int, on_changes: bool) -> str:
    """The shipped conf.d file with only its autosave settings replaced."""
    shipped = (MOSQUITTO / "edgewatch.conf").read_text()
    shipped = re.sub(r"^autosave_(interval|on_changes) .*\n", "", shipped, flags=re.M)
    extra = f"autosave_interval {interval}\n"
    if on_changes:
        extra += "autosave_on_changes true\n"
    return shipped + extra


def shipped_autosave() -> tuple[int, bool]:
    text = (MOSQUITTO / "edgewatch.conf").read_text()
    interval = re.search(r"^autosave_interval (\d+)", text, flags=re.M)
    on_changes = re.search(r"^autosave_on_changes (\w+)", text, flags=re.M)
    return (int(interval.group(1)) if interval else 1800,
            bool(on_changes and on_changes.group(1) == "true"))  # fmt: skip


class Bridge:
    """The bridge's persistent session: QoS 1 on edge/+/raw/#, records what arrives."""

    def __init__(self, port: int, password: str) -> None:
        self.port, self.password = port, password
        self.received: set[int] = set()
        self.last_at = time.monotonic()
        self.client: paho.Client | None = None

    def connect(self) -> None:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="edgewatch-bridge-box",
                             protocol=paho.MQTTv5)  # fmt: skip
        client.username_pw_set("edgewatch-bridge", self.password)
        connected = threading.Event()
        client.on_connect = lambda *_a: connected.set()
        client.on_message = self._on_message
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 86400
        client.connect("127.0.0.1", self.port, keepalive=30, clean_start=False,
                       properties=properties)  # fmt: skip
        client.loop_start()
        if not connected.wait(10):
            raise RuntimeError("bridge session did not connect")
        client.subscribe("edge/+/raw/#", qos=1)
        self.client = client
        self.last_at = time.monotonic()

    def _on_message(self, _c: object, _u: object, msg: paho.MQTTMessage) -> None:
        self.received.add(int(msg.payload))
        self.last_at = time.monotonic()

    def disconnect(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None

    def drop(self) -> None:
        """The broker died under us: stop the network loop without a DISCONNECT."""
        if self.client is not None:
            self.client.loop_stop()
            self.client = None


class Device:
    """Publishes 0, 1, 2, … at ``rate``; ``acked()`` maps each PUBACKed n to its publish time."""

    def __init__(self, port: int, password: str, rate: float) -> None:
        self.rate = rate
        self.sent: list[tuple[float, paho.MQTTMessageInfo]] = []
        self.stop = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="device-dev-1",
                                  protocol=paho.MQTTv5)  # fmt: skip
        self.client.username_pw_set("dev-1", password)
        self.client.max_inflight_messages_set(1000)
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n, started = 0, time.monotonic()
        while not self.stop.is_set():
            delay = started + n / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            at = time.monotonic()
            self.sent.append(
                (at, self.client.publish("edge/dev-1/raw/payments", str(n).encode(), qos=1))
            )
            n += 1

    def acked(self) -> dict[int, float]:
        """The shipped ACL lets dev-1 publish there, so every PUBACK is an acceptance."""
        return {n: at for n, (at, info) in enumerate(self.sent) if _acked(info)}

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.client.loop_stop()


def measure(
    directory: Path, *, mode: str, interval: int, on_changes: bool, rate: float, kill_after_s: float
) -> dict[str, object]:
    broker = DebianMosquitto(directory, autosave_conf(interval, on_changes))
    broker.add_user("edgewatch-bridge", "bridge-secret")
    broker.add_user("dev-1", "device-secret")
    broker.start()
    bridge = Bridge(broker.port, "bridge-secret")
    bridge.connect()
    time.sleep(0.3)
    if mode == "away":
        bridge.disconnect()
    assert broker.proc is not None
    cpu_before = _cpu_s(broker.proc.pid)
    device = Device(broker.port, "device-secret", rate)
    device.thread.start()
    time.sleep(kill_after_s)
    cpu = _cpu_s(broker.proc.pid) - cpu_before
    killed_at = time.monotonic()
    broker.kill()  # the power cut
    if mode == "up":
        bridge.drop()
    device.close()
    broker.start()
    bridge.connect()
    while time.monotonic() - bridge.last_at < 3.0:  # drain the session until it is quiet
        time.sleep(0.2)
    bridge.disconnect()
    broker.stop()
    acked = device.acked()
    lost = sorted(set(acked) - bridge.received)
    window = killed_at - acked[lost[0]] if lost else 0.0
    return {
        "mode": mode,
        "autosave_interval": interval,
        "autosave_on_changes": on_changes,
        "rate_msgs_per_s": rate,
        "killed_after_s": kill_after_s,
        "acked": len(acked),
        "received": len(bridge.received & set(acked)),
        "lost": len(lost),
        "lost_window_s": round(window, 2),
        "broker_cpu_s_per_1000_msgs": round(cpu / max(len(acked), 1) * 1000, 4),
    }


def _acked(info: paho.MQTTMessageInfo) -> bool:
    try:
        return info.is_published()
    except RuntimeError:  # queued while the connection was down: never sent
        return False


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["up", "away"], default="away")
    parser.add_argument("--autosave-interval", type=int, default=shipped_autosave()[0])
    parser.add_argument("--on-changes", action="store_true", default=shipped_autosave()[1])
    parser.add_argument("--rate", type=float, default=500.0, help="device messages per second")
    parser.add_argument("--kill-after", type=float, default=10.0, help="seconds into the stream")
    parser.add_argument("--keep", type=Path, help="run in this (new) directory and keep it")
    args = parser.parse_args(argv)
    options = {"mode": args.mode, "interval": args.autosave_interval, "rate": args.rate,
               "on_changes": args.on_changes, "kill_after_s": args.kill_after}  # fmt: skip
    if args.keep:
        args.keep.mkdir(parents=True)
        result = measure(args.keep, **options)
    else:
        with tempfile.TemporaryDirectory(prefix="edgewatch-power-loss-") as directory:
            result = measure(Path(directory), **options)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
