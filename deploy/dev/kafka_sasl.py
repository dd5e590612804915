"""The dev stack's Kafka with a production-shaped listener: SASL_SSL, SCRAM-SHA-512, ACLs.

``SecureStack`` is ``stack.Stack`` plus, on the same broker:

- a SASL_SSL listener on its own loopback port, with a certificate from a throwaway CA
  made here with openssl (``tls/ca.pem`` is what a box gets as ``ssl_ca_location``);
- SCRAM-SHA-512 credentials written when the storage is formatted (``StorageTool format
  --add-scram``), so the broker never runs a moment without them;
- the StandardAuthorizer. The PLAINTEXT listener (and the controller) authenticate as
  ``User:ANONYMOUS``, a super user here: tests and the rest of the dev stack keep working
  on it and act as "the centre". On the SASL_SSL listener, principals get only their ACLs.

``grant_box(admin, user)`` gives a box's principal what the bridge needs and nothing more:
write (and describe) on topics prefixed ``edge.``, read on ``edge.models`` only, and its
consumer groups (prefixed ``edgewatch-bridge``).

    python deploy/dev/kafka_sasl.py up DIR     # start it, print bootstraps, CA, user
    python deploy/dev/kafka_sasl.py down DIR
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
BOX_USER = "edge-box"
CENTRAL_USER = "edgewatch-central"
SCRAM = "SCRAM-SHA-512"


def _stack_module() -> ModuleType:
    import importlib.util

    spec = importlib.util.spec_from_file_location("edgewatch_stack", HERE / "stack.py")
    assert spec is not None
    assert spec.loader is not None
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Tls:
    """The throwaway CA and the broker's PKCS#12 key store."""

    ca: Path
    keystore: Path
    password: str


def make_tls(directory: Path) -> Tls:
    """A CA and a broker certificate for 127.0.0.1 / localhost (kept if already there)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, keystore, secret = directory / "ca.pem", directory / "broker.p12", directory / "password"
    if ca.exists() and keystore.exists() and secret.exists():
        return Tls(ca, keystore, secret.read_text().strip())
    password = secrets.token_hex(16)
    secret.write_text(password + "\n")
    key, csr, cert = directory / "broker.key", directory / "broker.csr", directory / "broker.pem"
    ca_key = directory / "ca.key"
    ext = directory / "broker.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-keyout",
            str(ca_key), "-out", str(ca), "-subj", "/CN=edgewatch dev Kafka CA")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
            "-subj", "/CN=127.0.0.1")  # fmt: skip
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "30", "-out", str(cert), "-extfile", str(ext))  # fmt: skip
    openssl("pkcs12", "-export", "-in", str(cert), "-inkey", str(key), "-certfile", str(ca),
            "-name", "broker", "-out", str(keystore), "-passout", f"pass:{password}")  # fmt: skip
    return Tls(ca, keystore, password)


def secure_properties(base: str, sasl_port: int, tls: Tls) -> str:
    """``base`` (the dev stack's server.properties) with the SASL_SSL listener and authorizer."""
    added = {
        "listeners": f",SASL_SSL://127.0.0.1:{sasl_port}",
        "advertised.listeners": f",SASL_SSL://127.0.0.1:{sasl_port}",
        "listener.security.protocol.map": ",SASL_SSL:SASL_SSL",
    }
    lines = [line + added.get(line.partition("=")[0], "") for line in base.splitlines()]
    jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    lines += [
        f"sasl.enabled.mechanisms={SCRAM}",
        f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={jaas}",
        "ssl.keystore.type=PKCS12",
        f"ssl.keystore.location={tls.keystore}",
        f"ssl.keystore.password={tls.password}",
        f"ssl.key.password={tls.password}",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users=User:ANONYMOUS",
        "allow.everyone.if.no.acl.found=false",
        "",
    ]
    return "\n".join(lines)


class SecureStack(_stack_module().Stack):  # type: ignore[misc]
    """The dev stack whose Kafka also listens with SASL_SSL + SCRAM and checks ACLs."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.tls = make_tls(self.dir / "tls")
        password_file = self.dir / "tls" / "box-password"
        if not password_file.exists():
            password_file.write_text(secrets.token_urlsafe(18) + "\n")
        self.box_password = password_file.read_text().strip()
        port_file = self.dir / "tls" / "sasl-port"
        if not port_file.exists():
            port_file.write_text(str(_stack_module().free_port()))
        self.sasl_port = int(port_file.read_text())

    @property
    def sasl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    def _kafka_properties(self, data: Path) -> str:
        return secure_properties(super()._kafka_properties(data), self.sasl_port, self.tls)

    def start_kafka(self) -> None:
        """Format the storage with the SCRAM credential first; the base class then starts it."""
        stack = _stack_module()
        data = self.dir / "kafka"
        if not (data / "logs" / "meta.properties").exists():
            data.mkdir(parents=True, exist_ok=True)
            s = self.state
            s.kafka_port = s.kafka_port or stack.free_port()
            s.controller_port = s.controller_port or stack.free_port()
            s.cluster_id = s.cluster_id or secrets.token_hex(11)
            props = data / "server.properties"
            props.write_text(self._kafka_properties(data))
            scram = f"{SCRAM}=[name={BOX_USER},password={self.box_password}]"
            java = ["java", *stack.KAFKA_HEAP.split(), "-cp", f"{stack.ensure_kafka_libs()}/*"]
            subprocess.run(
                [*java, "kafka.tools.StorageTool", "format", "-t",
                 stack._kafka_cluster_id(s.cluster_id), "-c", str(props), "--add-scram", scram],
                check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            self._save()
        super().start_kafka()

    def box_kafka_settings(self) -> dict[str, Any]:
        """The bridge's [kafka] section for this broker, minus the password (a credential)."""
        return {
            "bootstrap_servers": self.sasl_bootstrap,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": SCRAM,
            "sasl_username": BOX_USER,
            "ssl_ca_location": str(self.tls.ca),
        }


def grant_box(bootstrap: str, user: str = BOX_USER) -> None:
    """ACLs of a box: write edge.*, read edge.models, its consumer groups; nothing else."""
    _allow(bootstrap, user, [
        ("TOPIC", "edge.", "PREFIXED", "WRITE"), ("TOPIC", "edge.", "PREFIXED", "DESCRIBE"),
        ("TOPIC", "edge.models", "LITERAL", "READ"),
        ("GROUP", "edgewatch-bridge", "PREFIXED", "READ"),
    ])  # fmt: skip


def grant_central(bootstrap: str, password: str, user: str = CENTRAL_USER) -> None:
    """A SCRAM login and the ACLs of the central jobs: read edge.*, write train.* and
    edge.monitoring, their consumer groups and transactional ids (edgewatch-central*)."""
    from confluent_kafka.admin import (
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    login = UserScramCredentialUpsertion(
        user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), password.encode()
    )
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.alter_user_scram_credentials([login]).values():
        future.result(timeout=30)
    _allow(bootstrap, user, [
        ("TOPIC", "edge.", "PREFIXED", "READ"), ("TOPIC", "edge.", "PREFIXED", "DESCRIBE"),
        ("TOPIC", "train.", "PREFIXED", "WRITE"), ("TOPIC", "train.", "PREFIXED", "DESCRIBE"),
        ("TOPIC", "edge.monitoring", "LITERAL", "WRITE"),
        ("GROUP", "edgewatch-central", "PREFIXED", "READ"),
        ("TRANSACTIONAL_ID", "edgewatch-central", "PREFIXED", "WRITE"),
    ])  # fmt: skip


def _allow(bootstrap: str, user: str, grants: list[tuple[str, str, str, str]]) -> None:
    """ALLOW ACLs (resource type, name, pattern type, operation) for ``user`` from any
    host, waited for until the broker's authorizer has them (the controller has them once
    created)."""
    from confluent_kafka.admin import (
        AclBinding,
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
    )

    admin = AdminClient({"bootstrap.servers": bootstrap})
    principal, allow = f"User:{user}", AclPermissionType.ALLOW
    bindings = [
        AclBinding(ResourceType[kind], name, ResourcePatternType[pattern], principal, "*",
                   AclOperation[operation], allow)
        for kind, name, pattern, operation in grants
    ]  # fmt: skip
    for future in admin.create_acls(bindings).values():
        future.result(timeout=30)
    wanted = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, principal, None,
                              AclOperation.ANY, AclPermissionType.ANY)  # fmt: skip
    deadline = time.monotonic() + 30
    while len(admin.describe_acls(wanted).result(timeout=30)) < len(bindings):
        if time.monotonic() > deadline:
            raise RuntimeError(f"ACLs of {principal} not visible after 30 s")
        time.sleep(0.2)


def create_topics(bootstrap: str, names: list[str], partitions: int = 3) -> None:
    """Topics are the centre's to create (the box has no CREATE); existing ones are kept."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    for future in futures.values():
        try:
            future.result(timeout=30)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


EDGE_TOPICS = ["edge.raw.payments", "edge.raw.sensors", "edge.scored.payments",
               "edge.scored.sensors", "edge.alerts", "edge.deadletter", "edge.status",
               "edge.rollouts", "edge.models"]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    stack = SecureStack(args.directory)
    if args.command == "down":
        stack.down()
        return 0
    stack.start_kafka()
    create_topics(stack.state.kafka_bootstrap, EDGE_TOPICS)
    grant_box(stack.state.kafka_bootstrap)
    password_file = stack.dir / "tls" / "box-password"
    print(json.dumps({"plaintext_bootstrap": stack.state.kafka_bootstrap,
                      "sasl_ssl_bootstrap": stack.sasl_bootstrap, "ca": str(stack.tls.ca),
                      "user": BOX_USER, "password_file": str(password_file)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
