#!/usr/bin/env python3
"""Local dev stack: a private Mosquitto and a single-node KRaft Apache Kafka broker.

    python deploy/dev/stack.py up [--dir DIR]      start both (free loopback ports), print addresses
    python deploy/dev/stack.py status [--dir DIR]  print addresses and whether each is alive
    python deploy/dev/stack.py down [--dir DIR]    stop both

Tests, benchmarks, the demo and developers all use this file (standard library only).
Mosquitto comes from Debian's package; the Kafka jars are fetched from Maven Central by
``deploy/dev/kafka/pom.xml`` into ``.cache/kafka-libs`` on first use.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KAFKA_LIBS = REPO / ".cache" / "kafka-libs"
KAFKA_POM = REPO / "deploy" / "dev" / "kafka" / "pom.xml"
DEFAULT_DIR = REPO / ".cache" / "stack" / "dev"
KAFKA_HEAP = os.environ.get("EDGEWATCH_KAFKA_HEAP", "-Xms128m -Xmx512m")
START_TIMEOUT_S = 90.0


class StackError(RuntimeError):
    """A part of the stack could not be set up or started."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); look at its state.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def stop_pid(pid: int | None, *, hard: bool = False, timeout_s: float = 20.0) -> None:
    if not pid_alive(pid):
        return
    assert pid is not None
    os.kill(pid, signal.SIGKILL if hard else signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def ensure_mosquitto() -> str:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        raise StackError("mosquitto is not installed: apt-get install -y mosquitto")
    return binary


def ensure_kafka_libs() -> Path:
    """Fetch the broker jars once (mvn dependency:copy-dependencies)."""
    if not any(KAFKA_LIBS.glob("kafka_2.13-*.jar")):
        if shutil.which("mvn") is None:
            raise StackError("mvn is needed once to fetch the Kafka jars")
        subprocess.run(
            ["mvn", "-q", "-B", "-f", str(KAFKA_POM), "dependency:copy-dependencies"],
            check=True,
        )
    return KAFKA_LIBS


@dataclass
class StackState:
    """What is running where; saved as stack.json in the stack directory."""

    directory: str
    mqtt_port: int = 0
    kafka_port: int = 0
    controller_port: int = 0
    mosquitto_pid: int | None = None
    kafka_pid: int | None = None
    cluster_id: str = field(default_factory=lambda: "")

    @property
    def mqtt_address(self) -> str:
        return f"127.0.0.1:{self.mqtt_port}"

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"


class Stack:
    """Start, stop and inspect the two brokers living in one directory."""

    def __init__(self, directory: Path = DEFAULT_DIR) -> None:
        self.dir = directory.resolve()
        self.state_file = self.dir / "stack.json"
        self.state = self._read_state()

    def _read_state(self) -> StackState:
        if self.state_file.exists():
            return StackState(**json.loads(self.state_file.read_text()))
        return StackState(directory=str(self.dir))

    def _save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(asdict(self.state), indent=2))

    # Mosquitto -----------------------------------------------------------------------------
    def start_mosquitto(self) -> None:
        if pid_alive(self.state.mosquitto_pid):
            return
        binary = ensure_mosquitto()
        data = self.dir / "mosquitto"
        data.mkdir(parents=True, exist_ok=True)
        self.state.mqtt_port = self.state.mqtt_port or free_port()
        conf = data / "mosquitto.conf"
        conf.write_text(
            "\n".join(
                [
                    f"listener {self.state.mqtt_port} 127.0.0.1",
                    "allow_anonymous true",
                    f"user {getpass.getuser()}",
                    "persistence true",
                    f"persistence_location {data}/",
                    "autosave_interval 10",
                    # Room for a consumer that is away or slow: QoS 1 messages queue per
                    # persistent session up to these limits (the bench sizes stay below).
                    "max_queued_messages 500000",
                    "max_queued_bytes 0",
                    "max_inflight_messages 1000",
                    # Send small packets (PUBACKs) at once instead of waiting on Nagle.
                    "set_tcp_nodelay true",
                    "message_size_limit 2097152",
                    "persistent_client_expiration 1d",
                    f"log_dest file {data}/mosquitto.log",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "",
                ]
            )
        )
        log = (data / "stdout.log").open("ab")
        proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=log, stderr=log, start_new_session=True
        )
        self.state.mosquitto_pid = proc.pid
        self._save()
        self._wait(
            lambda: port_open(self.state.mqtt_port), "mosquitto", proc.pid, data / "mosquitto.log"
        )

    def stop_mosquitto(self, *, hard: bool = False) -> None:
        stop_pid(self.state.mosquitto_pid, hard=hard)
        self.state.mosquitto_pid = None
        self._save()

    # Kafka ---------------------------------------------------------------------------------
    def _kafka_properties(self, data: Path) -> str:
        s = self.state
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{s.controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{s.kafka_port},"
                f"CONTROLLER://127.0.0.1:{s.controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{s.kafka_port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={data}/logs",
                "num.partitions=3",
                "auto.create.topics.enable=true",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=1",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "transaction.state.log.num.partitions=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.num.partitions=1",
                "group.initial.rebalance.delay.ms=0",
                "",
            ]
        )

    def _kafka_log_config(self, data: Path) -> Path:
        path = data / "log4j2.properties"
        path.write_text(
            "\n".join(
                [
                    "status = warn",
                    "appender.file.type = File",
                    "appender.file.name = file",
                    f"appender.file.fileName = {data}/server.log",
                    "appender.file.layout.type = PatternLayout",
                    "appender.file.layout.pattern = [%d] %p %m (%c)%n",
                    "rootLogger.level = INFO",
                    "rootLogger.appenderRef.file.ref = file",
                    "logger.kafka.name = kafka",
                    "logger.kafka.level = INFO",
                    "logger.org.name = org.apache.kafka",
                    "logger.org.level = WARN",
                    "",
                ]
            )
        )
        return path

    def start_kafka(self) -> None:
        if pid_alive(self.state.kafka_pid):
            return
        libs = ensure_kafka_libs()
        data = self.dir / "kafka"
        data.mkdir(parents=True, exist_ok=True)
        s = self.state
        s.kafka_port = s.kafka_port or free_port()
        s.controller_port = s.controller_port or free_port()
        props = data / "server.properties"
        props.write_text(self._kafka_properties(data))
        log_config = self._kafka_log_config(data)
        classpath = f"{libs}/*"
        java = ["java", *KAFKA_HEAP.split(), "-XX:+UseSerialGC", "-Djava.awt.headless=true"]
        java.append(f"-Dlog4j2.configurationFile={log_config}")
        if not (data / "logs" / "meta.properties").exists():
            s.cluster_id = s.cluster_id or uuid.uuid4().hex[:22]
            subprocess.run(
                [*java, "-cp", classpath, "kafka.tools.StorageTool", "format",
                 "-t", _kafka_cluster_id(s.cluster_id), "-c", str(props)],
                check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
        server_log = data / "server.log"
        offset = server_log.stat().st_size if server_log.exists() else 0
        out = (data / "stdout.log").open("ab")
        proc = subprocess.Popen(
            [*java, "-cp", classpath, "kafka.Kafka", str(props)],
            stdout=out, stderr=out, start_new_session=True,
        )  # fmt: skip
        s.kafka_pid = proc.pid
        self._save()
        self._wait(lambda: _log_says(server_log, offset, "Kafka Server started"), "kafka",
                   proc.pid, server_log)  # fmt: skip

    def stop_kafka(self, *, hard: bool = False) -> None:
        stop_pid(self.state.kafka_pid, hard=hard, timeout_s=30)
        self.state.kafka_pid = None
        self._save()

    # Both ----------------------------------------------------------------------------------
    def up(self) -> StackState:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.start_mosquitto()
        self.start_kafka()
        return self.state

    def down(self) -> None:
        self.stop_kafka()
        self.stop_mosquitto()

    def destroy(self) -> None:
        self.down()
        shutil.rmtree(self.dir, ignore_errors=True)

    def status(self) -> dict[str, object]:
        s = self.state
        return {
            "dir": str(self.dir),
            "mqtt": {"address": s.mqtt_address, "alive": pid_alive(s.mosquitto_pid)},
            "kafka": {"bootstrap": s.kafka_bootstrap, "alive": pid_alive(s.kafka_pid)},
        }

    def _wait(self, ready: object, name: str, pid: int, log: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if ready():  # type: ignore[operator]
                return
            if not pid_alive(pid):
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise StackError(f"{name} exited during start-up; log tail:\n{tail}")
            time.sleep(0.1)
        raise StackError(f"{name} did not become ready within {START_TIMEOUT_S:.0f}s")


def _kafka_cluster_id(seed: str) -> str:
    """A KRaft cluster id: 16 bytes, URL-safe base64 without padding (22 characters).

    The first byte's top bit is cleared so the id never starts with "-": StorageTool would
    read such an id as an option and refuse to format (Kafka's own ids avoid it too).
    """
    import base64

    raw = bytearray(uuid.UUID(hex=seed.ljust(32, "0")[:32]).bytes)
    raw[0] &= 0x7F
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _log_says(path: Path, offset: int, text: str) -> bool:
    if not path.exists():
        return False
    with path.open("rb") as handle:
        handle.seek(offset)
        return text.encode() in handle.read()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("command", choices=["up", "down", "status", "destroy"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="stack directory")
    args = parser.parse_args(argv)
    stack = Stack(args.dir)
    started = time.monotonic()
    if args.command == "up":
        stack.up()
        status = stack.status()
        status["start_s"] = round(time.monotonic() - started, 2)
        print(json.dumps(status, indent=2))
        print(f"export EDGEWATCH_MQTT__PORT={stack.state.mqtt_port}", file=sys.stderr)
    elif args.command == "down":
        stack.down()
    elif args.command == "destroy":
        stack.destroy()
    else:
        print(json.dumps(stack.status(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
