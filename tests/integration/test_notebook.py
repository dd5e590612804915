"""The data scientist's notebook runs top to bottom against the real stack (nbclient)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.integration.test_loop import new_loop

pytestmark = [pytest.mark.broker, pytest.mark.central, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "models" / "notebooks" / "edgewatch_loop.ipynb"


def test_the_notebook_executes_cleanly_against_the_stack(
    tmp_path: Path, central_stack: object, mqtt_prefix: str, datasets: Path
) -> None:
    loop, lines = new_loop(tmp_path / "loop", central_stack, mqtt_prefix, datasets)
    copy = tmp_path / "edgewatch_loop.ipynb"
    shutil.copy(NOTEBOOK, copy)
    try:
        failed = loop.prepare()
        assert failed is None, "\n".join(lines[-30:])
        # Raises CellExecutionError, naming the cell, if any cell fails.
        loop.run_notebook(copy, timeout_s=600)
    finally:
        loop.close()
    notebook = json.loads(copy.read_text())
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert all(cell["execution_count"] for cell in code)
    assert not [o for cell in code for o in cell["outputs"] if o["output_type"] == "error"]
    # The plots are in the notebook (ROC, PR, score distributions) ...
    images = [o for cell in code for o in cell["outputs"] if "image/png" in o.get("data", {})]
    assert len(images) >= 3

    # ... the gate passed, the challenger was published as version 2, the fleet serves it
    # (the box's status, from Kafka) and scored events carry it.
    def plain(cell: dict) -> str:
        return "".join("".join(o.get("data", {}).get("text/plain", "")) for o in cell["outputs"])

    gate, published, fleet, scored = code[-4:]
    assert "FAIL" not in plain(gate)
    assert plain(published) == "'payments-fraud-v2.ewb'"
    assert re.search(r"loop-box\s+online\s+payments\s+payments-fraud\s+2\s", plain(fleet))
    assert re.search(r"payments-fraud\s+2\s+[1-9]\d*", plain(scored))
