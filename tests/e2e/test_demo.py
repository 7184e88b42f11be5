"""`make demo` walks the whole chain on a fresh stack: the user's first experience, tested as such."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.e2e(port_offset=100)
@pytest.mark.slow
def test_demo_runs_the_whole_chain(shell_env, tmp_path):
    # `make demo` = install (already done by `make test`) + this script
    r = subprocess.run(["bash", "pipelines/demo.sh"], cwd=REPO, env=shell_env, capture_output=True,
                       text=True, timeout=1500)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert "OK: " in r.stdout  # dataset verify
    assert "registered radimagenet-demo version" in out
    assert re.search(r"radimagenet-demo version \d+ is now @champion", r.stdout)
    assert re.search(r"test AUC", r.stdout, re.I), r.stdout[-3000:]
    last = r.stdout.strip().splitlines()
    assert any(line.startswith("MLflow UI:") and "http://127.0.0.1:" in line for line in last[-5:])
