"""The README's commands work as written: every bash block is either run here, in order, in one shell,
or names the test that exercises it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

BLOCK = re.compile(r"<!-- readme: (run|skip[^>]*) -->\s*```bash\n(.*?)```", re.S)


def readme_blocks() -> list[tuple[str, str]]:
    return BLOCK.findall((REPO / "README.md").read_text())


def test_every_bash_block_is_run_or_names_its_test():
    text = (REPO / "README.md").read_text()
    assert text.count("```bash") == len(readme_blocks()), "a bash block in README.md has no readme: tag"
    for tag, _ in readme_blocks():
        if tag.startswith("skip"):
            names = re.findall(r"tests/[\w/]+\.py", tag)
            assert names and all((REPO / n).is_file() for n in names), tag


def test_readme_quick_start_comes_first():
    first = readme_blocks()[0][1]
    assert first.splitlines()[0].startswith("make demo") and "make test" in first


@pytest.mark.e2e(port_offset=140)
@pytest.mark.slow
def test_walkthrough_runs_as_written(shell_env, tmp_path):
    script = "set -euo pipefail\n" + "\n".join(body for tag, body in readme_blocks() if tag == "run")
    work = tmp_path / "cwd"
    work.mkdir()
    (work / "pipelines").symlink_to(REPO / "pipelines")
    r = subprocess.run(["bash", "-c", script], cwd=work, env=shell_env, capture_output=True, text=True,
                       timeout=1200)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert "OK: " in r.stdout and "is now @champion" in r.stdout
    assert "test AUC" in out
    assert " predicted, " in r.stdout and '"predictions": [{"p_' in r.stdout  # predict, then the served model
