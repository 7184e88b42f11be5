"""Nothing assumes one machine: a second Ray node joins the stack's head and a 2-worker pretraining runs
one Ray Train worker on each node.

The second node is a ``ray start --address`` of its own on this machine: its own temp dir, HOME and
TMPDIR, one CPU and a resource label (``second_node``) that identifies it. Like the head it gets the
cluster token (``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN``) and the S3/MLflow settings in its own environment
(workers never receive credentials from the driver). ``scaling.placement_strategy=STRICT_SPREAD`` puts
one worker per node; the dataset and checkpoints live on S3 (the last checkpoint is read back from
there), and a local ``checkpoint.storage_path`` is refused on this 2-node cluster. A local ImageNet
weights file of the driver (``init=imagenet``) reaches a worker on the second node through S3. The node
is stopped in teardown, whatever happened.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers_shards import ensure_bucket, write_test_dataset
from radimagenet.errors import ConfigError

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LABEL = "second_node"  # the custom resource that marks the second node


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


@dataclass(frozen=True)
class Node:
    node_id: str
    temp_dir: Path  # its Ray temp dir (sessions, logs)
    tmp: Path  # its TMPDIR


@pytest.fixture(scope="module")
def second_node(stack_env: dict[str, str]) -> Iterator[Node]:
    """Start a second Ray node that joins the stack's head; yield it; stop it afterwards."""
    from radimagenet.io.cluster import connect
    from radimagenet.ops.stack.processes import _stop_pid

    home = Path(stack_env["RADIMAGENET_HOME"])
    gcs = json.loads((home / "state.json").read_text())["ports"]["ray"]
    root = Path(tempfile.mkdtemp(prefix="rin2-"))  # short: Ray's socket paths must stay under ~107 bytes
    for sub in ("home", "tmp"):
        (root / sub).mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RADIMAGENET_HOME")}
    env.update(HOME=str(root / "home"), TMPDIR=str(root / "tmp"), RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"]  # what the head requires of a node
    ports = dict(zip(("--node-manager-port", "--object-manager-port", "--runtime-env-agent-port",
                      "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port"),
                     _free_ports(6), strict=True))
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--block", "--disable-usage-stats",
           f"--address=127.0.0.1:{gcs}", "--num-cpus=1", f"--resources={json.dumps({LABEL: 1})}",
           f"--temp-dir={root / 'ray'}", "--min-worker-port=0", "--max-worker-port=0",
           *(f"{flag}={port}" for flag, port in ports.items())]
    log = open(root / "node.log", "wb")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        node_id = None
        with connect():
            deadline = time.monotonic() + 90
            while node_id is None and time.monotonic() < deadline and proc.poll() is None:
                node_id = next((n["NodeID"] for n in _alive_nodes() if n["Resources"].get(LABEL)), None)
                time.sleep(0.5)
        if node_id is None:
            raise RuntimeError(f"the second Ray node did not join: {(root / 'node.log').read_text()[-3000:]}")
        yield Node(node_id, root / "ray", root / "tmp")
    finally:
        _stop_pid(proc.pid, 15.0)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def manifest(stack_env: dict[str, str]) -> str:
    """4 train and 2 val shards: enough readers for 2 workers whether data is dealt by shard or by sample."""
    prefix = f"s3://radimagenet/tests/two-nodes/{uuid.uuid4().hex[:8]}"
    ensure_bucket(prefix)
    write_test_dataset(prefix, {"train": 128, "val": 64}, shard_samples=32, image_size=32, num_classes=4)
    return f"{prefix}/manifest.json"


def _config(manifest: str, run_name: str, storage_path: str):
    from radimagenet.config import load_config
    from radimagenet.tasks.pretrain import PretrainConfig

    overrides = {
        "data.manifest": manifest, "model.arch": "resnet10t", "data.num_workers": 1, "data.shuffle_buffer": 32,
        "train.epochs": 1, "train.batch_size": 16, "train.lr": 0.003, "train.optimizer": "adamw",
        "train.log_every": 2, "scaling.num_workers": 2, "scaling.cpus_per_worker": 1,
        "scaling.placement_strategy": "STRICT_SPREAD", "tracking.experiment": "test-two-nodes",
        "tracking.run_name": run_name, "registry.register": False,
        "tracking.system_metrics_interval": 0, "checkpoint.storage_path": storage_path,
    }
    return load_config(PretrainConfig, None, [f"{k}={v}" for k, v in overrides.items()])


def _train_workers_logged(temp_dir: Path) -> list[str]:
    """The log files of the Ray Train worker actors a node ran (Ray names each worker's actor class at
    the top of its ``worker-*.out``)."""
    return [p.name for p in sorted(temp_dir.glob("session_latest/logs/worker-*.out"))
            if ":actor_name:RayTrainWorker" in p.read_text(errors="replace")]


def test_pretraining_runs_one_worker_on_each_of_two_nodes(second_node, manifest, tmp_path):
    from radimagenet.io.cluster import connect
    from radimagenet.io.storage import arrow_filesystem
    from radimagenet.tasks.pretrain import pretrain
    from radimagenet.train import checkpoint

    run_name = f"two-nodes-{uuid.uuid4().hex[:6]}"
    result = pretrain(_config(manifest, run_name, "s3://radimagenet/test-checkpoints/two-nodes"))

    assert result.metrics["epoch"] == 1 and result.metrics["val/n_images"] == 64  # both ranks' val shares
    fs, root = arrow_filesystem(f"s3://radimagenet/test-checkpoints/two-nodes/{run_name}")
    with checkpoint.fs_latest(fs, root) as latest:  # what a restarted worker or the driver reads, from S3
        assert latest is not None and checkpoint.read_state(latest)["mlflow_run_id"] == result.run_id
    with connect():
        nodes = {n["NodeID"] for n in _alive_nodes()}
    assert second_node.node_id in nodes and len(nodes) == 2
    # the second node exists only for this module, so the train worker it ran is this run's; STRICT_SPREAD
    # put the run's other worker on the head (2 workers, 2 nodes, never two on one)
    workers = _train_workers_logged(second_node.temp_dir)
    assert len(workers) == 1, workers

    # a local checkpoint folder cannot serve workers on two nodes: refused with one clear line
    with pytest.raises(ConfigError, match=r"local folder but the Ray cluster has 2 nodes.*s3://"):
        pretrain(_config(manifest, f"{run_name}-local", str(tmp_path / "ckpt")))
    assert not (tmp_path / "ckpt").exists()


def test_a_local_imagenet_weights_file_reaches_workers_on_other_nodes(second_node, tmp_path):
    """init=imagenet with the driver's weights file: the driver copies it beside the run's S3 checkpoints and
    a worker on the second node fetches it into its own temp folder."""
    import hashlib

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from radimagenet.config import load_config
    from radimagenet.io.cluster import connect
    from radimagenet.tasks.finetune import share_weights
    from radimagenet.tasks.finetune_config import FinetuneConfig

    weights = tmp_path / "resnet10t.safetensors"
    weights.write_bytes(os.urandom(1 << 20))  # the bytes travel as they are; nothing here parses them
    run_name = f"weights-{uuid.uuid4().hex[:6]}"
    cfg = load_config(FinetuneConfig, None, [
        "data.manifest=s3://radimagenet/none", "backbone=", "init=imagenet", "model.arch=resnet10t",
        f"model.weights_file={weights}", f"tracking.run_name={run_name}",
        "checkpoint.storage_path=s3://radimagenet/test-checkpoints/two-nodes"])
    shared = share_weights(cfg)
    uri = f"s3://radimagenet/test-checkpoints/two-nodes/{run_name}/imagenet-weights/resnet10t.safetensors"
    assert shared.model.weights_file == uri
    def weights_on_node(uri: str) -> tuple[str, str]:  # defined here: Ray ships it by value, not by module
        """(local path, SHA-256) of the ImageNet weights file ``uri`` as a worker resolves it on its node."""
        from radimagenet.models.factory import imagenet_weights_file

        path = imagenet_weights_file("resnet10t", uri)
        with open(path, "rb") as f:
            return path, hashlib.sha256(f.read()).hexdigest()

    with connect():
        pinned = NodeAffinitySchedulingStrategy(second_node.node_id, soft=False)
        path, digest = ray.get(ray.remote(num_cpus=0, scheduling_strategy=pinned)(weights_on_node).remote(uri))
    assert digest == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert Path(path).is_relative_to(second_node.tmp)  # fetched on that node, not read from the driver's folder
    local = share_weights(dataclasses.replace(cfg, checkpoint=dataclasses.replace(
        cfg.checkpoint, storage_path=str(tmp_path / "ckpt"))))
    assert local.model.weights_file == str(weights)  # a local checkpoint folder means one node: nothing to ship
