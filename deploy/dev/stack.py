#!/usr/bin/env python3
"""Local dev stack: a private Mosquitto, a single-node KRaft Apache Kafka broker and, on
request, the central stream SQL engine (a local Apache Flink cluster plus its SQL Gateway).

    python deploy/dev/stack.py up [--central] [--dir DIR]  start (free loopback ports), print
                                                           addresses
    python deploy/dev/stack.py status [--dir DIR]          addresses, whether each is alive
    python deploy/dev/stack.py down [--dir DIR]            stop everything that runs
    python deploy/dev/stack.py fetch-central               fetch the Flink distribution (once)

Tests, benchmarks, the demo and developers all use this file (standard library only).
Mosquitto comes from Debian's package; the Kafka jars are fetched from Maven Central by
``deploy/dev/kafka/pom.xml`` into ``.cache/kafka-libs`` on first use.

The central engine (``--central``; plain ``up`` never touches it): Apache Flink 2.3.0 as a
JobManager, one TaskManager (4 slots, default parallelism 1) and the SQL Gateway, each one
``java`` process started directly under our own ``Popen`` (own session, pid recorded in
stack.json; the command lines are those of the distribution's scripts, whose config-parsing
JVM runs are skipped), so ``down`` stops them with SIGTERM and ``stop_central(hard=True)``
kills them with SIGKILL, like a crash. Logs: ``DIR/flink/log/{jobmanager,taskmanager,
sql-gateway}.log``. Every port is a free loopback port; the config dir, logs,
checkpoints (retained on cancellation) and savepoints live under ``DIR/flink``. The Flink
distribution is assembled once outside the clone, in ``$EDGEWATCH_CACHE/flink-2.3.0``
(default ``~/.cache/edgewatch``): bin/ and conf/ from the ``apache-flink`` wheel, lib/ and opt/
from ``apache-flink-libraries`` (both ``pip download --no-deps``, unpacked, never installed, so
PyFlink's pinned dependencies stay out of every venv), plus the SQL Gateway and the Kafka SQL
connector jars from Maven Central (``deploy/dev/flink/pom.xml``).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KAFKA_LIBS = REPO / ".cache" / "kafka-libs"
KAFKA_POM = REPO / "deploy" / "dev" / "kafka" / "pom.xml"
DEFAULT_DIR = REPO / ".cache" / "stack" / "dev"
KAFKA_HEAP = os.environ.get("EDGEWATCH_KAFKA_HEAP", "-Xms128m -Xmx512m")
START_TIMEOUT_S = 90.0

FLINK_VERSION = "2.3.0"
FLINK_POM = REPO / "deploy" / "dev" / "flink" / "pom.xml"
# The TaskManager's whole process (heap, metaspace, network buffers, managed memory): small
# enough for a dev box, large enough for the preprocess job's dedupe state at bench rates.
FLINK_TM_MEMORY = os.environ.get("EDGEWATCH_FLINK_TM_MEMORY", "1024m")
FLINK_JM_MEMORY = os.environ.get("EDGEWATCH_FLINK_JM_MEMORY", "640m")
FLINK_GATEWAY_HEAP = os.environ.get("EDGEWATCH_FLINK_GATEWAY_HEAP", "384m")
# The pieces of the distribution taken from the two wheels (the rest is PyFlink itself).
_DIST_PARTS = ("bin", "conf", "lib", "opt")
# The distribution in the platform wheel is the same shell scripts on every platform; pinning
# one wheel keeps the download independent of the interpreter that runs this script.
_WHEEL_PLATFORM = ("--python-version", "3.11", "--platform", "manylinux2014_x86_64")


class StackError(RuntimeError):
    """A part of the stack could not be set up or started."""


_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range. A port the kernel may also
    hand to an outgoing connection can be taken before a slow JVM binds it, even by the
    readiness poll itself (a TCP self-connect), so servers get ports no client ever gets."""
    low, _ = _ephemeral_range()
    candidates = range(10_000, low) if low > 12_000 else range(low, 65_535)
    for _attempt in range(200):
        port = random.choice(candidates)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise StackError(f"no free loopback port in {candidates}")


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


def stop_pid(
    pid: int | None, *, hard: bool = False, timeout_s: float = 20.0, group: bool = False
) -> None:
    """Stop ``pid`` (SIGTERM, or SIGKILL when ``hard``) and reap it; ``group`` signals its
    whole process group (a session leader started with ``start_new_session``)."""
    if not pid_alive(pid):
        return
    assert pid is not None
    send = os.killpg if group else os.kill
    with contextlib.suppress(ProcessLookupError):
        send(pid, signal.SIGKILL if hard else signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            send(pid, signal.SIGKILL)
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


def cache_root() -> Path:
    """Downloads that outlive a clone: ``$EDGEWATCH_CACHE`` or ``~/.cache/edgewatch``."""
    return Path(os.environ.get("EDGEWATCH_CACHE") or Path.home() / ".cache" / "edgewatch")


def flink_home() -> Path:
    return cache_root() / f"flink-{FLINK_VERSION}"


def ensure_flink_home() -> Path:
    """Assemble the Flink distribution once (pip download + unpack, mvn); reuse it after."""
    home = flink_home()
    if (home / ".complete").exists():
        return home
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        raise StackError(f"{' and '.join(missing)} needed to set up the Flink engine: "
                         "apt-get install -y openjdk-17-jre-headless maven")  # fmt: skip
    pip = _pip_command()
    partial = home.with_name(f"{home.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    wheels = partial / "wheels"
    print(f"fetching Apache Flink {FLINK_VERSION} into {home} (once)", file=sys.stderr)
    subprocess.run(
        [*pip, "download", "-q", "--no-deps", "--only-binary=:all:", *_WHEEL_PLATFORM,
         "-d", str(wheels), f"apache-flink=={FLINK_VERSION}",
         f"apache-flink-libraries=={FLINK_VERSION}"],
        check=True,
    )  # fmt: skip
    for wheel in sorted(wheels.glob("*.whl")):
        _unpack_distribution(wheel, partial)
    shutil.rmtree(wheels)
    maven = subprocess.run(
        ["mvn", "-q", "-B", "-Dstyle.color=never", "-f", str(FLINK_POM), "dependency:copy",
         f"-Dflink.home={partial}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if maven.returncode != 0:
        raise StackError(f"mvn could not fetch the Flink jars:\n{maven.stdout[-3000:]}")
    (partial / "plugins").mkdir(exist_ok=True)
    for script in (partial / "bin").iterdir():
        if script.suffix in {".sh", ""}:
            script.chmod(0o755)
    needed = ["bin/bash-java-utils.jar", "conf/config.yaml", "conf/log4j-console.properties",
              "lib/flink-dist-*.jar", "opt/flink-sql-gateway-*.jar",
              "lib/flink-sql-connector-kafka-*.jar"]  # fmt: skip
    absent = [pattern for pattern in needed if not any(partial.glob(pattern))]
    if absent:
        raise StackError(f"the Flink distribution in {partial} lacks {absent}")
    (partial / ".complete").write_text(f"apache-flink {FLINK_VERSION}\n")
    if (home / ".complete").exists():  # another process finished first
        shutil.rmtree(partial, ignore_errors=True)
        return home
    shutil.rmtree(home, ignore_errors=True)  # an interrupted earlier attempt
    partial.rename(home)
    return home


def _pip_command() -> list[str]:
    """A pip that can download: this interpreter's, the repo venv's, or pip3 on PATH."""
    candidates = [[sys.executable, "-m", "pip"], [str(REPO / ".venv/bin/python"), "-m", "pip"]]
    if shutil.which("pip3"):
        candidates.append(["pip3"])
    for command in candidates:
        probe = subprocess.run([*command, "--version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return command
    raise StackError("pip is needed once to fetch the Flink distribution from PyPI "
                     "(apt-get install -y python3-pip, or run make setup first)")  # fmt: skip


def _unpack_distribution(wheel: Path, home: Path) -> None:
    """Copy pyflink/{bin,conf,lib,opt}/ out of a wheel into ``home`` (nothing else)."""
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.infolist():
            parts = Path(member.filename).parts
            if member.is_dir() or len(parts) < 3 or parts[0] != "pyflink":
                continue
            if parts[1] not in _DIST_PARTS or ".." in parts:
                continue
            target = home.joinpath(*parts[1:])
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, target.open("wb") as sink:
                shutil.copyfileobj(source, sink)


def http_json(url: str, timeout_s: float = 2.0) -> object:
    """GET ``url`` and decode its JSON body (None when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


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
    # The central engine (zero / None until ``start_central`` ran once in this directory).
    flink_rest_port: int = 0
    flink_rpc_port: int = 0
    flink_blob_port: int = 0
    sql_gateway_port: int = 0
    jobmanager_pid: int | None = None
    taskmanager_pid: int | None = None
    sql_gateway_pid: int | None = None

    @property
    def mqtt_address(self) -> str:
        return f"127.0.0.1:{self.mqtt_port}"

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def flink_rest(self) -> str:
        return f"http://127.0.0.1:{self.flink_rest_port}"

    @property
    def sql_gateway(self) -> str:
        return f"http://127.0.0.1:{self.sql_gateway_port}"

    @property
    def central_pids(self) -> dict[str, int | None]:
        return {
            "jobmanager": self.jobmanager_pid,
            "taskmanager": self.taskmanager_pid,
            "sql-gateway": self.sql_gateway_pid,
        }


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

    # Central engine: Flink JobManager + TaskManager + SQL Gateway ----------------------------
    @property
    def flink_dir(self) -> Path:
        return self.dir / "flink"

    @property
    def checkpoint_dir(self) -> Path:
        """Retained checkpoints: ``<checkpoint_dir>/<job>/<job id>/chk-N/_metadata``."""
        return self.flink_dir / "checkpoints"

    @property
    def savepoint_dir(self) -> Path:
        return self.flink_dir / "savepoints"

    def central_alive(self) -> bool:
        return all(pid_alive(pid) for pid in self.state.central_pids.values())

    def start_central(self) -> None:
        """Start whichever of JobManager, TaskManager and SQL Gateway is not running; wait
        until the TaskManager has registered and the gateway answers."""
        self._spawn_central()
        self._wait_central_or_retry()

    def _wait_central_or_retry(self) -> None:
        """Wait for the engine; if a JVM died while starting, start all three once more
        (after the reason is printed). On the first start that is on new ports, in case one
        was taken before its JVM could bind it; a restart keeps its ports, which clients know."""
        first_start = not (self.flink_dir / "started").exists()
        try:
            self._wait_central()
        except StackError as failure:
            print(f"the Flink engine failed to start, trying once more: {failure}", file=sys.stderr)
            self.stop_central(hard=True)
            if first_start:
                s = self.state
                s.flink_rest_port = s.flink_rpc_port = s.flink_blob_port = s.sql_gateway_port = 0
            self._spawn_central()
            self._wait_central()
        (self.flink_dir / "started").touch()

    def _spawn_central(self) -> None:
        if self.central_alive():
            return
        home = ensure_flink_home()
        s = self.state
        s.flink_rest_port = s.flink_rest_port or free_port()
        s.flink_rpc_port = s.flink_rpc_port or free_port()
        s.flink_blob_port = s.flink_blob_port or free_port()
        s.sql_gateway_port = s.sql_gateway_port or free_port()
        conf = self.flink_dir / "conf"
        for sub in ("conf", "log", "tmp", "checkpoints", "savepoints"):
            (self.flink_dir / sub).mkdir(parents=True, exist_ok=True)
        settings = self._flink_settings(home)
        (conf / "config.yaml").write_text(_yaml(settings, f"written by {__file__} for {self.dir}"))
        shutil.copy(home / "conf" / "log4j-console.properties", conf)
        env = {name: value for name, value in os.environ.items()
               if not name.startswith(("FLINK_", "_FLINK_"))}  # fmt: skip
        env["FLINK_CONF_DIR"] = str(conf)
        commands = self._central_commands(home, conf, settings)
        for name, command in commands.items():
            if pid_alive(s.central_pids[name]):
                continue
            out = (self.flink_dir / "log" / f"{name}.out").open("ab")
            proc = subprocess.Popen(command, stdout=out, stderr=out, env=env,
                                    start_new_session=True)  # fmt: skip
            setattr(s, f"{name.replace('-', '_')}_pid", proc.pid)
        self._save()

    def _central_commands(
        self, home: Path, conf: Path, settings: dict[str, object]
    ) -> dict[str, list[str]]:
        """The three JVMs' command lines, as the distribution's scripts build them (lib/ on
        the classpath, its JVM options, the memory sizes Flink derives from the config) but
        without the scripts' five extra JVM runs per start (config parsing, sizing)."""
        lib = sorted(p for p in (home / "lib").glob("*.jar") if not p.name.startswith("flink-dist"))
        dist = sorted((home / "lib").glob("flink-dist*.jar"))
        gateway_jars = [*(home / "opt").glob("flink-sql-gateway-*.jar"),
                        *(home / "opt").glob("flink-python-*.jar")]  # fmt: skip
        classpath = ":".join(str(p) for p in [*lib, *dist])
        java = ["java", "-XX:+IgnoreUnrecognizedVMOptions",
                *str(settings["env.java.opts.all"]).split()]  # fmt: skip
        jm_jvm, jm_dynamic = _resource_params(home, conf, settings, "GET_JM_RESOURCE_PARAMS")
        tm_jvm, tm_dynamic = _resource_params(home, conf, settings, "GET_TM_RESOURCE_PARAMS")
        log_dir = self.flink_dir / "log"

        def logging(name: str) -> list[str]:
            config = f"file:{conf / 'log4j-console.properties'}"
            return [f"-Dlog.file={log_dir / name}.log", f"-Dlog4j.configurationFile={config}",
                    "-Dconsole.log.level=OFF"]  # fmt: skip

        return {
            "jobmanager": [*java, *jm_jvm, *logging("jobmanager"), "-classpath", classpath,
                           "org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint",
                           *jm_dynamic, "--configDir", str(conf)],
            "taskmanager": [*java, *tm_jvm, *logging("taskmanager"), "-classpath", classpath,
                            "org.apache.flink.runtime.taskexecutor.TaskManagerRunner",
                            "--configDir", str(conf), *tm_dynamic],
            "sql-gateway": [*java, *str(settings["env.java.opts.sql-gateway"]).split(),
                            *logging("sql-gateway"), "-classpath",
                            ":".join([classpath, *map(str, gateway_jars)]),
                            "org.apache.flink.table.gateway.SqlGateway"],
        }  # fmt: skip

    def _central_ready(self) -> bool:
        overview = http_json(f"{self.state.flink_rest}/v1/overview")
        if not isinstance(overview, dict) or int(overview.get("taskmanagers", 0)) < 1:
            return False
        return isinstance(http_json(f"{self.state.sql_gateway}/v1/info"), dict)

    def _wait_central(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._central_ready():
                return
            for name, pid in self.state.central_pids.items():
                if not pid_alive(pid):
                    tail = self._flink_log_tail(name)
                    raise StackError(f"flink {name} exited during start-up; log tail:\n{tail}")
            time.sleep(0.2)
        raise StackError(f"the Flink engine did not become ready within {START_TIMEOUT_S:.0f}s")

    def _flink_log_tail(self, name: str) -> str:
        """The log's causes (every ERROR and "Caused by" line: a JVM that failed to start
        logs its shutdown after the reason) and its last lines."""
        logs = [self.flink_dir / "log" / f"{name}.log", self.flink_dir / "log" / f"{name}.out"]
        parts = []
        for log in filter(Path.exists, logs):
            text = log.read_text(errors="replace")
            causes = [line for line in text.splitlines()
                      if " ERROR " in line or line.startswith("Caused by")]  # fmt: skip
            parts.append(f"== {log.name} (causes)\n" + "\n".join(causes[:20]))
            parts.append(f"== {log.name} (end)\n{text[-1500:]}")
        return "\n".join(parts)

    def stop_central(self, *, hard: bool = False) -> None:
        """Stop the engine; ``hard`` kills all three JVMs with SIGKILL at once (a crash:
        no cancellation, no final checkpoint, retained checkpoints stay on disk)."""
        pids = self.state.central_pids
        if hard:
            for pid in pids.values():
                if pid_alive(pid):
                    assert pid is not None
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
        # Gateway first (it holds sessions), the JobManager last (it owns the jobs).
        for name in ("sql-gateway", "taskmanager", "jobmanager"):
            stop_pid(pids[name], hard=hard, timeout_s=30, group=True)
        self.state.jobmanager_pid = self.state.taskmanager_pid = None
        self.state.sql_gateway_pid = None
        self._save()

    def _flink_settings(self, home: Path) -> dict[str, object]:
        s, d = self.state, self.flink_dir
        java_opts = _yaml_value(home / "conf" / "config.yaml", "all")
        return {
            "jobmanager.rpc.address": "127.0.0.1",
            "jobmanager.rpc.port": s.flink_rpc_port,
            "jobmanager.bind-host": "127.0.0.1",
            "jobmanager.memory.process.size": FLINK_JM_MEMORY,
            "jobmanager.memory.jvm-metaspace.size": "160m",
            "jobmanager.memory.jvm-overhead.min": "64m",
            "jobmanager.execution.failover-strategy": "region",
            "taskmanager.host": "127.0.0.1",
            # Otherwise derived from the host name, which need not resolve on a CI machine.
            "taskmanager.resource-id": f"edgewatch-taskmanager-{s.flink_rpc_port}",
            "taskmanager.bind-host": "127.0.0.1",
            "taskmanager.numberOfTaskSlots": 4,
            "taskmanager.memory.process.size": FLINK_TM_MEMORY,
            "taskmanager.memory.jvm-metaspace.size": "192m",
            "taskmanager.memory.jvm-overhead.min": "96m",
            "taskmanager.memory.managed.size": "64m",
            "taskmanager.memory.network.min": "32m",
            "taskmanager.memory.network.max": "64m",
            "parallelism.default": 1,
            "rest.address": "127.0.0.1",
            "rest.bind-address": "127.0.0.1",
            "rest.port": s.flink_rest_port,
            "blob.server.port": s.flink_blob_port,
            "sql-gateway.endpoint.rest.address": "127.0.0.1",
            "sql-gateway.endpoint.rest.bind-address": "127.0.0.1",
            "sql-gateway.endpoint.rest.port": s.sql_gateway_port,
            # A notebook sits idle for a while; its session (and tables) should outlast that.
            "sql-gateway.session.idle-timeout": "2 h",
            "state.backend.type": "hashmap",
            "execution.checkpointing.dir": self.checkpoint_dir.as_uri(),
            "execution.checkpointing.savepoint-dir": self.savepoint_dir.as_uri(),
            "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
            "execution.checkpointing.num-retained": 2,
            "io.tmp.dirs": str(d / "tmp"),
            "web.tmpdir": str(d / "tmp"),
            "env.java.opts.all": java_opts,
            "env.java.opts.sql-gateway": f"-Xms64m -Xmx{FLINK_GATEWAY_HEAP}",
        }

    # All -----------------------------------------------------------------------------------
    def up(self, *, central: bool = False) -> StackState:
        self.dir.mkdir(parents=True, exist_ok=True)
        if central:  # the JVMs start while the brokers do; Flink needs Kafka only for jobs
            self._spawn_central()
        self.start_mosquitto()
        self.start_kafka()
        if central:
            self._wait_central_or_retry()
        return self.state

    def down(self) -> None:
        self.stop_central()
        self.stop_kafka()
        self.stop_mosquitto()

    def destroy(self) -> None:
        self.down()
        shutil.rmtree(self.dir, ignore_errors=True)

    def status(self) -> dict[str, object]:
        s = self.state
        status: dict[str, object] = {
            "dir": str(self.dir),
            "mqtt": {"address": s.mqtt_address, "alive": pid_alive(s.mosquitto_pid)},
            "kafka": {"bootstrap": s.kafka_bootstrap, "alive": pid_alive(s.kafka_pid)},
        }
        if s.sql_gateway_port:  # started here at least once
            status["central"] = {
                "sql_gateway": s.sql_gateway,
                "flink_rest": s.flink_rest,
                "checkpoints": str(self.checkpoint_dir),
                "alive": self.central_alive(),
            }
        return status

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


def _yaml(settings: dict[str, object], comment: str) -> str:
    """Flink's config.yaml with flat keys (strings JSON-quoted, which YAML reads alike)."""
    lines = [f"# {comment}; rewritten on every start"]
    lines += [f"{key}: {json.dumps(value) if isinstance(value, str) else value}"
              for key, value in settings.items()]  # fmt: skip
    return "\n".join(lines) + "\n"


def _resource_params(
    home: Path, conf: Path, settings: dict[str, object], command: str
) -> tuple[list[str], list[str]]:
    """The JVM options (-Xmx, metaspace, direct memory) and ``-D`` sizes Flink derives from
    the memory settings, as its start scripts ask BashJavaUtils for them; cached in the
    distribution directory per distinct memory configuration (it costs a JVM start)."""
    memory = {k: v for k, v in settings.items() if ".memory." in k or "numberOfTaskSlots" in k}
    digest = hashlib.sha256(json.dumps([command, memory], sort_keys=True).encode()).hexdigest()
    cache = home / ".resource-params" / f"{command}-{digest[:16]}.json"
    if cache.exists():
        jvm, dynamic = json.loads(cache.read_text())
        return list(jvm), list(dynamic)
    classpath = ":".join([str(home / "bin" / "bash-java-utils.jar"),
                          *map(str, sorted((home / "lib").glob("flink-dist*.jar")))])  # fmt: skip
    run = subprocess.run(
        ["java", "-classpath", classpath, "org.apache.flink.runtime.util.bash.BashJavaUtils",
         command, "--configDir", str(conf)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    prefix = "BASH_JAVA_UTILS_EXEC_RESULT:"
    results = [line[len(prefix) :] for line in run.stdout.splitlines() if line.startswith(prefix)]
    if run.returncode != 0 or len(results) != 2:
        raise StackError(f"Flink could not size its {command[4:6]} memory:\n{run.stdout[-2000:]}")
    jvm, dynamic = results[0].split(), results[1].split()
    cache.parent.mkdir(exist_ok=True)
    partial = cache.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps([jvm, dynamic]))
    partial.replace(cache)
    return jvm, dynamic


def _yaml_value(path: Path, key: str) -> str:
    """The value of the first ``key:`` line in a YAML file (the dist's JVM options)."""
    for line in path.read_text().splitlines():
        name, _, value = line.strip().partition(":")
        if name == key and value.strip():
            return value.strip()
    return ""


def _log_says(path: Path, offset: int, text: str) -> bool:
    if not path.exists():
        return False
    with path.open("rb") as handle:
        handle.seek(offset)
        return text.encode() in handle.read()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("command", choices=["up", "down", "status", "destroy", "fetch-central"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="stack directory")
    parser.add_argument(
        "--central", action="store_true", help="also start the Flink engine and its SQL Gateway"
    )
    args = parser.parse_args(argv)
    if args.command == "fetch-central":
        print(ensure_flink_home())
        return 0
    stack = Stack(args.dir)
    started = time.monotonic()
    if args.command == "up":
        stack.up(central=args.central)
        status = stack.status()
        status["start_s"] = round(time.monotonic() - started, 2)
        print(json.dumps(status, indent=2))
        print(f"export EDGEWATCH_MQTT__PORT={stack.state.mqtt_port}", file=sys.stderr)
        if args.central:  # what edgewatch-central needs to find this stack's engine
            s = stack.state
            print(f"export EDGEWATCH_KAFKA__BOOTSTRAP_SERVERS={s.kafka_bootstrap}\n"
                  f"export EDGEWATCH_CENTRAL__SQL_GATEWAY={s.sql_gateway}\n"
                  f"export EDGEWATCH_CENTRAL__FLINK_REST={s.flink_rest}\n"
                  f"export EDGEWATCH_CENTRAL__CHECKPOINT_DIR={stack.checkpoint_dir}",
                  file=sys.stderr)  # fmt: skip
    elif args.command == "down":
        stack.down()
    elif args.command == "destroy":
        stack.destroy()
    else:
        print(json.dumps(stack.status(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
