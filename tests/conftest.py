"""Shared fixtures: the real dev stack (once per run) and unique topics per test."""

from __future__ import annotations

import importlib.util
import itertools
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
_counter = itertools.count()


def load_script(relative: str, name: str) -> ModuleType:
    """A script of the repository (not a package module), loaded by its path."""
    spec = importlib.util.spec_from_file_location(name, REPO / relative)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def load_stack_module() -> ModuleType:
    """deploy/dev/stack.py is a script, not a package: load it by path."""
    return load_script("deploy/dev/stack.py", "edgewatch_stack")


@pytest.fixture(scope="session")
def stack_module() -> ModuleType:
    return load_stack_module()


@pytest.fixture(scope="session")
def stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    stack_module: ModuleType,
) -> Iterator[object]:
    """Mosquitto and Kafka on free loopback ports, started once for the whole run (and the
    central engine beside them when the run selected a `central` test: its JVMs then start
    while Kafka does)."""
    directory = tmp_path_factory.mktemp("stack")
    instance = stack_module.Stack(directory)
    instance.up(central=any(item.get_closest_marker("central") for item in request.session.items))
    yield instance
    instance.destroy()


@pytest.fixture(scope="session")
def central_stack(stack: object) -> object:
    """The run's stack with the central engine (Flink + SQL Gateway) started on first use, so
    runs that select no `central` test never pay its start-up; stopped with the stack."""
    stack.start_central()  # type: ignore[attr-defined]
    return stack


@pytest.fixture(scope="session")
def sql_gateway(central_stack: object) -> str:
    """Base URL of the SQL Gateway's REST API, e.g. http://127.0.0.1:PORT."""
    return str(central_stack.state.sql_gateway)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def mqtt_port(stack: object) -> int:
    return int(stack.state.mqtt_port)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def kafka_bootstrap(stack: object) -> str:
    return str(stack.state.kafka_bootstrap)  # type: ignore[attr-defined]


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Names that no other test (or earlier run against the same broker) uses."""
    run = uuid.uuid4().hex[:8]

    def make(base: str) -> str:
        return f"{base}-{run}-{next(_counter)}"

    return make


@pytest.fixture
def mqtt_prefix(unique_name: Callable[[str], str]) -> str:
    """A topic prefix of its own, so tests never see each other's messages."""
    return unique_name("t").replace("-", "")


@pytest.fixture
def kafka_topic(unique_name: Callable[[str], str]) -> Callable[[str], str]:
    def make(base: str = "topic") -> str:
        return unique_name(f"test.{base}")

    return make


@pytest.fixture(scope="session")
def datasets() -> Path:
    if not DATASETS.is_dir():
        pytest.skip(f"shared datasets not found at {DATASETS}")
    return DATASETS


@pytest.fixture(autouse=True)
def _no_ambient_edgewatch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings tests must not pick up a developer's EDGEWATCH_* or credentials."""
    for name in list(os.environ):
        if name.startswith("EDGEWATCH_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)
