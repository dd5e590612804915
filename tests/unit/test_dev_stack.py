"""The dev stack script's pure parts (the brokers themselves run in the integration tests)."""

from __future__ import annotations

from tests.conftest import load_stack_module


def test_kafka_cluster_ids_never_look_like_an_option() -> None:
    """StorageTool refused to format when a random id began with '-' (1 start in 64)."""
    cluster_id = load_stack_module()._kafka_cluster_id
    ids = [cluster_id(f"{first:02x}" + "0" * 20) for first in range(256)]  # every first byte
    assert all(len(i) == 22 and not i.startswith(("-", "_")) for i in ids)
    assert len(set(ids)) == 128  # the top bit is all that is given up
    assert cluster_id("f8" + "0" * 20) == ids[0xF8]  # still derived from its seed
