"""The shipped Mosquitto files as Debian runs them, and MQTT clients with a box's logins.

``debian_mosquitto`` starts the broker with Debian's own main configuration (persistence on,
``include_dir`` conf.d) and the shipped ``deploy/mosquitto`` files dropped in, changing only
paths and the port so it runs in a test directory. ``Device`` is a paho MQTT v5 client that
records the reason code of every PUBACK, which is how Mosquitto says "not authorized".
"""

from __future__ import annotations

import getpass
import os
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.conftest import load_stack_module

REPO = Path(__file__).resolve().parents[2]
MOSQUITTO = REPO / "deploy" / "mosquitto"
INSTALL = REPO / "deploy" / "install.sh"

# Debian 12's /etc/mosquitto/mosquitto.conf (package mosquitto 2.0.11-1.2+deb12u1), with its
# paths as placeholders.
DEBIAN_MAIN = """\
# Place your local configuration in /etc/mosquitto/conf.d/
pid_file {directory}/mosquitto.pid

persistence true
persistence_location {directory}/data/

log_dest file {directory}/mosquitto.log

include_dir {directory}/conf.d
"""


class BrokerRefusedError(RuntimeError):
    """Mosquitto exited instead of listening; the message holds its log."""


class DebianMosquitto:
    """A Mosquitto with Debian's main config and the shipped conf.d file, ACL and logins."""

    def __init__(self, directory: Path, conf: str | None = None) -> None:
        stack = load_stack_module()
        self.directory = directory
        self.port = int(stack.free_port())
        self.passwd = directory / "edgewatch.passwd"
        self.acl = directory / "edgewatch.acl"
        self.binary = str(stack.ensure_mosquitto())
        (directory / "data").mkdir(parents=True, exist_ok=True)
        (directory / "conf.d").mkdir(exist_ok=True)
        shipped = conf if conf is not None else (MOSQUITTO / "edgewatch.conf").read_text()
        replaced = (
            shipped.replace("listener 1883 127.0.0.1", f"listener {self.port} 127.0.0.1")
            .replace("/etc/mosquitto/edgewatch.passwd", str(self.passwd))
            .replace("/etc/mosquitto/edgewatch.acl", str(self.acl))
        )
        assert replaced.count(str(directory)) == 2, "shipped paths changed: update this helper"
        (directory / "conf.d" / "edgewatch.conf").write_text(replaced)
        self.acl.write_text((MOSQUITTO / "edgewatch.acl").read_text())
        self.passwd.touch()
        # Debian runs it as root and it drops to `mosquitto`; here it keeps the test's user.
        main = DEBIAN_MAIN.format(directory=directory) + f"user {getpass.getuser()}\n"
        (directory / "mosquitto.conf").write_text(main)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> DebianMosquitto:
        stack = load_stack_module()
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.directory / "mosquitto.conf")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerRefusedError(self.log())
            if stack.port_open(self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerRefusedError(f"not listening after {timeout_s}s: {self.log()}")

    def log(self) -> str:
        out = b""
        if self.proc is not None and self.proc.poll() is not None and self.proc.stdout:
            out = self.proc.stdout.read()
        path = self.directory / "mosquitto.log"
        return out.decode(errors="replace") + (path.read_text() if path.exists() else "")

    def reload(self) -> None:
        """SIGHUP: Mosquitto rereads the password and ACL files (``systemctl reload``)."""
        assert self.proc is not None
        self.proc.send_signal(1)
        time.sleep(0.3)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def add_device(self, name: str) -> str:
        """``install.sh add-device NAME`` against this broker's password file."""
        env = {**os.environ, "EDGEWATCH_MOSQUITTO_PASSWD": str(self.passwd)}
        done = subprocess.run(
            ["bash", str(INSTALL), "add-device", name],
            capture_output=True, text=True, env=env, check=True,
        )  # fmt: skip
        self.reload()
        return done.stdout.strip()

    def add_user(self, name: str, password: str) -> None:
        subprocess.run(["mosquitto_passwd", "-b", str(self.passwd), name, password], check=True)
        if self.proc is not None and self.proc.poll() is None:
            self.reload()


class Device:
    """An MQTT v5 client logged in as one user; remembers each PUBACK's reason code."""

    def __init__(self, port: int, username: str, password: str, client_id: str = "") -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"{username}-{time.time_ns()}",
            protocol=paho.MQTTv5,
        )
        self.client.username_pw_set(username, password)
        self.acks: dict[int, int] = {}
        self.received: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.port = port

    def _on_publish(
        self, _c: object, _u: object, mid: int, reason: ReasonCode, _p: Properties
    ) -> None:
        with self._cond:
            self.acks[mid] = int(reason.value)
            self._cond.notify_all()

    def _on_message(self, _c: object, _u: object, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.received.append((msg.topic, bytes(msg.payload)))

    def connect(self) -> Device:
        result: list[int] = []
        ready = threading.Event()

        def on_connect(_c: object, _u: object, _f: object, reason: ReasonCode, _p: object) -> None:
            result.append(int(reason.value))
            ready.set()

        self.client.on_connect = on_connect
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        if not ready.wait(10) or result != [0]:
            self.close()
            raise ConnectionRefusedError(f"CONNACK {result}")
        return self

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        time.sleep(0.3)

    def publish(self, topic: str, payload: bytes = b"{}", timeout_s: float = 10.0) -> int:
        """Publish with QoS 1 and return the PUBACK reason code (0 accepted, 135 denied)."""
        info = self.client.publish(topic, payload, qos=1)
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while info.mid not in self.acks:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no PUBACK for {topic}")
                self._cond.wait(left)
            return self.acks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


NOT_AUTHORIZED = 135
