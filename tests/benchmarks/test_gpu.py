"""``benchmarks/gpu.sh`` on a machine without a GPU: it says so, runs the CPU path at its tiny size and
writes gpu.json + gpu.txt, starting the stack's S3 alone as it does on a lent GPU machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_script_without_a_gpu_runs_the_cpu_path_and_reports(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "RAY_", "RADIMAGENET_"))}
    env.update(OUT=str(tmp_path / "out"), CUDA_VISIBLE_DEVICES="", RADIMAGENET_GPU_PYTHON=sys.executable)
    port_base = int(os.environ.get("RADIMAGENET_TEST_PORT_BASE", "24000")) + 40  # beside the session's stack
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--port-base", str(port_base)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no GPU found" in proc.stdout and "NO GPU FOUND" in proc.stdout

    result = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert result["gpu"] is False and result["arch"] == "resnet50"
    assert (result["batch"], result["size"]) == (4, 64)  # the tiny CPU size
    assert result["s3"].startswith("the stack's S3 alone")
    assert result["real_images"] == result["batch"] * result["timed_steps"]
    assert result["synthetic_img_s"] > 0 and result["real_img_s"] > 0 and result["loader_alone_img_s"] > 0
    assert result["loader_cpu_ms_per_image"] > 0
    assert result["loader_cores_per_gpu"] == pytest.approx(
        result["loader_cpu_ms_per_image"] / 1e3 * result["synthetic_img_s"])
    summary = (tmp_path / "out" / "gpu.txt").read_text()
    assert "real loader (S3)" in summary and "loader cores per GPU" in summary
    assert (tmp_path / "out" / "gpu.log").read_text().strip()
