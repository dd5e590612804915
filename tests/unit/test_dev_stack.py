"""The dev stack script's pure parts (the brokers themselves run in the integration tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import load_stack_module


def test_kafka_cluster_ids_never_look_like_an_option() -> None:
    """StorageTool refused to format when a random id began with '-' (1 start in 64)."""
    cluster_id = load_stack_module()._kafka_cluster_id
    ids = [cluster_id(f"{first:02x}" + "0" * 20) for first in range(256)]  # every first byte
    assert all(len(i) == 22 and not i.startswith(("-", "_")) for i in ids)
    assert len(set(ids)) == 128  # the top bit is all that is given up
    assert cluster_id("f8" + "0" * 20) == ids[0xF8]  # still derived from its seed


def test_central_engine_config_binds_loopback_and_keeps_checkpoints(tmp_path: Path) -> None:
    """The Flink config the stack writes: every listener on 127.0.0.1 at the stack's own ports,
    checkpoints and savepoints under the stack dir, retained when a job is cancelled."""
    module = load_stack_module()
    stack = module.Stack(tmp_path)
    stack.state.flink_rest_port, stack.state.flink_rpc_port = 18081, 16123
    stack.state.flink_blob_port, stack.state.sql_gateway_port = 16124, 18083
    home = tmp_path / "home"
    (home / "conf").mkdir(parents=True)
    (home / "conf" / "config.yaml").write_text(
        "env:\n  java:\n    opts:\n      all: --add-opens=x\n"
    )
    text = module._yaml(stack._flink_settings(home), "test")
    config = dict(line.split(": ", 1) for line in text.splitlines()[1:])
    assert config["rest.port"] == "18081"
    assert config["sql-gateway.endpoint.rest.port"] == "18083"
    assert config["blob.server.port"] == "16124"
    binds = [key for key in config if key.endswith(("bind-host", "bind-address", ".address"))]
    assert len(binds) >= 6
    assert all(config[key] == '"127.0.0.1"' for key in binds)
    checkpoints = config["execution.checkpointing.dir"].strip('"')
    assert checkpoints == stack.checkpoint_dir.as_uri()
    assert checkpoints.startswith(tmp_path.resolve().as_uri())
    retention = config["execution.checkpointing.externalized-checkpoint-retention"]
    assert retention == '"RETAIN_ON_CANCELLATION"'
    assert config["env.java.opts.all"] == '"--add-opens=x"'
    assert stack.status().get("central") is not None  # ports assigned: status reports it


def test_plain_status_has_no_central_part(tmp_path: Path) -> None:
    assert "central" not in load_stack_module().Stack(tmp_path).status()


def test_fetching_the_engine_without_maven_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load_stack_module()
    monkeypatch.setenv("EDGEWATCH_CACHE", str(tmp_path))
    monkeypatch.setattr(module.shutil, "which", lambda tool: None if tool == "mvn" else tool)
    with pytest.raises(module.StackError, match=r"mvn needed .*apt-get install"):
        module.ensure_flink_home()
    assert not any(tmp_path.iterdir())  # nothing half-made in the cache


def test_a_fetched_engine_is_reused_without_any_tool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load_stack_module()
    monkeypatch.setenv("EDGEWATCH_CACHE", str(tmp_path))
    home = tmp_path / f"flink-{module.FLINK_VERSION}"
    home.mkdir()
    (home / ".complete").write_text("done")
    monkeypatch.setattr(module.shutil, "which", lambda tool: None)
    assert module.ensure_flink_home() == home
