"""``examples/quickstart.ipynb`` runs top to bottom against the local stack, so it cannot rot.

The dataset and backbone come from the fine-tuning tests' assets (built once per stack) and reach the
notebook through ``RADIMAGENET_NB_MANIFEST`` / ``RADIMAGENET_NB_BACKBONE``; the stack's client
variables are in the kernel's environment.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest


from helpers_assets import assets

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_executes(stack_env, tmp_path_factory, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    data = assets(os.environ["AWS_ENDPOINT_URL"], str(tmp_path_factory.mktemp("finetune-assets")))
    monkeypatch.setenv("RADIMAGENET_NB_MANIFEST", data["downstream"])
    monkeypatch.setenv("RADIMAGENET_NB_BACKBONE", data["backbone"])
    monkeypatch.setenv("RADIMAGENET_NB_STEPS", "3")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path_factory.mktemp("nb"))}}).execute()

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "step 3: loss" in text and "true " in text, text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 1, "no Grad-CAM overlay displayed"
