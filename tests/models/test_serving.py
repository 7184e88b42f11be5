"""A backbone registered by a real (tiny) pretraining run, used: ``radimagenet predict`` by registry
reference (logging nothing to MLflow), ``mlflow.pyfunc.load_model("models:/NAME@candidate")`` answering
the same numbers, ``mlflow models serve`` answering ``/invocations``, and ``export`` from the registry."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest

from helpers_assets import assets
from helpers_models import BROKEN, mixed_inputs, probabilities, read_csv
from radimagenet.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def data(stack_env, tmp_path_factory) -> Iterator[dict[str, str]]:
    yield assets(os.environ["AWS_ENDPOINT_URL"], str(tmp_path_factory.mktemp("serving-assets")))
    import ray

    if ray.is_initialized():  # disconnect before the stack stops: a driver whose GCS dies exits the process
        ray.shutdown()


@pytest.fixture(scope="module")
def predicted(data, tmp_path_factory) -> dict:
    """``radimagenet predict models:/NAME@candidate`` on the mixed folder (and what MLflow held before)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    before = _tracking_state(client)
    root = tmp_path_factory.mktemp("served")
    folder, kinds = mixed_inputs(root)
    out = root / "predictions.csv"
    assert main(["predict", f"models:/{data['backbone']}", str(folder), "--out", str(out), "--no-progress"]) == 0
    return {"rows": read_csv(out), "kinds": kinds, "folder": folder, "before": before, "client": client}


def _tracking_state(client) -> tuple:
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = sorted(r.info.run_id for r in client.search_runs(experiments, max_results=5000))
    versions = sorted((m.name, m.version) for m in client.search_model_versions(max_results=5000))
    return len(experiments), runs, versions


def _classes(data) -> list[str]:
    from radimagenet.models.registry import load

    return load(data["backbone"])[1].classes  # the notebook loader reads the pyfunc version too


def test_predict_by_reference_logs_nothing(data, predicted):
    rows, kinds = predicted["rows"], predicted["kinds"]
    classes = _classes(data)
    assert len(rows) == len(kinds)
    errors = {os.path.basename(r["path"]): r["error"] for r in rows if r["error"]}
    assert sorted(errors) == sorted(BROKEN)
    good = [r for r in rows if not r["error"]]
    assert {r["predicted"] for r in good} <= set(classes)
    assert np.allclose(probabilities(good, classes).sum(axis=1), 1.0, atol=1e-5)
    assert _tracking_state(predicted["client"]) == predicted["before"]  # no run, experiment or version added

    # NAME@alias without models:/ gives the same file
    out = predicted["folder"].parent / "again.csv"
    assert main(["predict", data["backbone"], str(predicted["folder"]), "--out", str(out), "--no-progress"]) == 0
    assert read_csv(out) == rows


def test_pyfunc_from_the_registry_equals_predict(data, predicted):
    import mlflow.pyfunc
    import pandas as pd

    rows, classes = predicted["rows"], _classes(data)
    model = mlflow.pyfunc.load_model(f"models:/{data['backbone']}")
    assert model.metadata.get_input_schema().input_names() == ["image"]
    answer = model.predict(pd.DataFrame({"image": [open(r["path"], "rb").read() for r in rows]}))
    ok = [i for i, r in enumerate(rows) if not r["error"]]
    assert answer.select_dtypes("number").columns.tolist() == [f"p_{c}" for c in classes]
    assert np.array_equal(answer[[f"p_{c}" for c in classes]].to_numpy()[ok],
                          probabilities([rows[i] for i in ok], classes))
    assert answer["predicted"].tolist() == [r["predicted"] for r in rows]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc: subprocess.Popen, url: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow models serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(1)
    raise AssertionError(f"mlflow models serve did not answer {url} in {timeout:.0f} s")


def test_served_model_answers_invocations(data, predicted, tmp_path):
    rows, classes = predicted["rows"], _classes(data)
    port = _free_port()
    env = dict(os.environ)  # MLflow's server (uvicorn) is found on PATH, as in an activated venv
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{data['backbone']}",
                             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        try:
            _wait_ready(proc, f"http://127.0.0.1:{port}/ping")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{(tmp_path / 'serve.log').read_text()[-4000:]}") from None
        images = [base64.b64encode(open(r["path"], "rb").read()).decode("ascii") for r in rows]
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[b] for b in images]}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as resp:
            answer = json.loads(resp.read())["predictions"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert len(answer) == len(rows)
    for got, want in zip(answer, rows, strict=True):
        assert got["predicted"] == want["predicted"]
        if want["error"]:
            assert got["error"].split(":")[0] == want["error"].split(":")[0]
            continue
        assert got["error"] == ""
        assert [got[f"p_{c}"] for c in classes] == [float(want[f"p_{c}"]) for c in classes]


def test_export_from_the_registry(data, predicted, tmp_path):
    import timm
    import torch

    from radimagenet.models.inference import load_predictor

    out = tmp_path / "timm"
    assert main(["export", data["backbone"], "--format", "timm", "--out", str(out)]) == 0
    predictor = load_predictor(data["backbone"], device="cpu")
    x = predictor.batch([predictor.decode(r["path"]) for r in predicted["rows"] if not r["error"]])
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.allclose(model(x), predictor.model(x), atol=1e-5)
