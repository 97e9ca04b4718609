"""notebooks/tour.ipynb runs top to bottom, and the committed copy carries its outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

TOUR = Path(__file__).resolve().parent.parent / "notebooks" / "tour.ipynb"


def _images(nb: nbformat.NotebookNode) -> int:
    return sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if o.get("output_type") == "display_data" and any(k.startswith("image/") for k in o.get("data", {})))


def test_committed_tour_has_outputs() -> None:
    nb = nbformat.read(TOUR, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs for c in code), "re-execute and save the notebook (command in its last cell)"
    assert not any(o.output_type == "error" for c in code for o in c.outputs)
    assert _images(nb) >= 4


def test_tour_executes(tmp_path: Path) -> None:
    """Runs in about 15 s on one CPU thread; the timeout is generous for loaded machines."""
    nb = nbformat.read(TOUR, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(TOUR.parent)}})
    try:
        client.execute()
    except Exception as e:  # CellExecutionError carries the failing cell's traceback
        pytest.fail(f"notebook failed: {e}")
    assert _images(nb) >= 4
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "BD-rate (PSNR-YUV) of neurocodec" in text and "PSNR-YUV" in text
