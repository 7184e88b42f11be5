"""End-to-end tests run the user-facing scripts in a shell, each with its own stack home and ports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def shell_env(tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    """A clean environment for a shell session: the venv first on PATH, a private stack home and ports."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "MLFLOW_", "RAY_", "RADIMAGENET_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["RADIMAGENET_HOME"] = str(tmp_path / "home")
    base = int(os.environ.get("RADIMAGENET_TEST_PORT_BASE", "24000"))
    env["RADIMAGENET_PORT_BASE"] = str(base + request.node.get_closest_marker("e2e").kwargs.get("port_offset", 100))
    yield env
    subprocess.run([sys.executable, "-m", "radimagenet", "stack", "down"], env=env, cwd=REPO,
                   capture_output=True, timeout=120)
