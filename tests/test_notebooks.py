"""Every notebook in notebooks/ executes top to bottom (nbclient; outputs are not kept in
git), against the session's cluster, Redis and stub model."""

from __future__ import annotations

import os

import nbformat
import pytest
import ray
from nbclient import NotebookClient

from agents.settings import PROJECT_ROOT, Settings

NOTEBOOKS = sorted((PROJECT_ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, cluster_url: str, settings: Settings, otlp_receiver):
    notebook = nbformat.read(path, as_version=4)
    env = {**os.environ, "AGENT_CLUSTER_URL": cluster_url, "REDIS_URL": settings.redis_url,
           "OPENAI_BASE_URL": settings.model.base_url, "MPLBACKEND": "Agg",
           "AGENT_CLUSTER_SPANS": str(otlp_receiver.out), "PYTHONPATH": str(PROJECT_ROOT),
           "RAY_ADDRESS": ray.get_runtime_context().gcs_address}  # the session's Ray
    client = NotebookClient(notebook, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(PROJECT_ROOT)}})
    client.execute(env=env)  # raises CellExecutionError with the failing cell's traceback
