"""kill -9 of Mosquitto with the shipped autosave settings: what a power cut can lose.

``power_loss.py`` measures it (README "Power loss"); these pin the shipped figures: with the
bridge keeping up nothing acknowledged is lost, and with the bridge away (its session
queueing) at most the messages of the last autosave period.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.power_loss import measure, shipped_autosave

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_bridge_keeping_up_loses_nothing_acknowledged(tmp_path: Path) -> None:
    interval, on_changes = shipped_autosave()
    result = measure(tmp_path, mode="up", interval=interval, on_changes=on_changes,
                     rate=500, kill_after_s=6)  # fmt: skip
    assert result["acked"] > 2000
    assert result["lost"] == 0


def test_bridge_away_loses_at_most_one_autosave_period(tmp_path: Path) -> None:
    interval, on_changes = shipped_autosave()
    assert not on_changes
    kill_after = interval + 4.5  # past the first save, wherever the kill lands in the period
    result = measure(tmp_path, mode="away", interval=interval, on_changes=on_changes,
                     rate=500, kill_after_s=kill_after)  # fmt: skip
    assert result["received"] > 0  # what was saved came back after the restart
    # Mosquitto saves when more than `interval` whole seconds have passed: <= interval + 1 s.
    assert float(result["lost_window_s"]) <= interval + 1.0 + 0.5  # type: ignore[arg-type]
