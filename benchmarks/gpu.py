"""The GPU benchmark of one lent machine: ResNet-50 bf16 images/s from synthetic tensors and from the real
loader streaming S3, and the loader's CPU cores per GPU.

    bash benchmarks/gpu.sh                          # on a lent GPU machine: sets up, then runs this
    .venv/bin/python benchmarks/gpu.py --out DIR    # S3 from AWS_*, else the stack's S3 started alone

One process, the training step of ``benchmarks/train_step.py`` (bf16 autocast, channels_last, SGD):
  synthetic      one batch on the device, reused: the model's ceiling;
  real           batches from ``radimagenet.data.loader.make_loader`` (``--loader-workers`` processes
                 streaming npy shards from S3), copied to the device inside the timed loop;
  loader alone   the same loader, nothing else: CPU seconds of its processes per image (psutil), so
                 ``cores per GPU = CPU s per image x the synthetic rate``: what feeding one GPU costs.
Goals (issue 15): real >= 90% of synthetic; <= 1.5 loader cores per GPU at the GPU's rate.
The dataset (``s3://radimagenet/benchmarks/gpu-v1-N-SIZE``, written by the tests' shard writer, reused
when there) is large enough that the timed steps stay inside one epoch. Without a GPU it says so and
runs the same path at a tiny size on CPU (fp32): the figures then only show that the script works.
Writes ``gpu.json`` (every figure) and ``gpu.txt`` (the summary) to ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the shard writer shared with the tests
sys.path.insert(0, str(ROOT / "benchmarks"))  # the training step of train_step.py

GOAL_REAL_OVER_SYNTHETIC = 0.90
GOAL_CORES_PER_GPU = 1.5
SIZE_KEYS = ("batch", "size", "warmup", "steps", "alone", "images", "shard")
SIZES = {  # batch, image size, warmup steps, timed steps, loader-alone batches, dataset images, shard samples
    "gpu": (256, 224, 10, 40, 30, 16_384, 256),
    "cpu": (4, 64, 1, 3, 8, 64, 16),  # tiny: shows that the script works
}


def start_s3(port_base: str) -> tuple[str, Path | None]:
    """S3 from the AWS_* environment, else the stack's S3 alone in a temporary home; (description, home)."""
    if os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ACCESS_KEY_ID"):
        return f"S3 from the environment ({os.environ.get('AWS_ENDPOINT_URL') or 'AWS'})", None
    from radimagenet.ops import stack

    home = Path(tempfile.mkdtemp(prefix="rin-gpu-"))  # short: the stack keeps unix sockets there
    os.environ.setdefault("RADIMAGENET_PORT_BASE", port_base)
    os.environ.update(stack.up(home, services=("s3",)))
    return f"the stack's S3 alone ({os.environ['AWS_ENDPOINT_URL']}, home {home})", home


def stop_s3(home: Path | None) -> None:
    if home is not None:
        from radimagenet.ops import stack

        stack.down(home)
        shutil.rmtree(home, ignore_errors=True)


def dataset(images: int, size: int, shard: int) -> tuple[dict, float]:
    """The benchmark's npy dataset (written once, then reused) and the seconds spent writing it."""
    from helpers_shards import ensure_bucket, write_test_dataset
    from radimagenet.dataset.format import load_manifest, manifest_uri
    from radimagenet.io import storage

    uri = f"s3://radimagenet/benchmarks/gpu-v1-{images}-{size}"
    if storage.exists(manifest_uri(uri)):
        return load_manifest(uri), 0.0
    ensure_bucket(uri)
    t = time.perf_counter()
    write_test_dataset(uri, {"train": images}, shard, image_size=size, num_classes=16)
    return load_manifest(uri), time.perf_counter() - t


class LoaderCpu:
    """CPU seconds of this process and of its loader processes (children that were not there before)."""

    def __init__(self) -> None:
        import psutil

        self.me = psutil.Process()
        self.before = {p.pid for p in self.me.children(recursive=True)}  # e.g. the S3 server we started

    def sample(self) -> tuple[float, dict[int, float]]:
        import psutil

        own = sum(self.me.cpu_times()[:2])
        kids = {}
        for p in self.me.children(recursive=True):
            if p.pid in self.before:
                continue
            try:
                kids[p.pid] = sum(p.cpu_times()[:2])
            except psutil.Error:
                pass
        return own, kids

    @staticmethod
    def delta(start: dict[int, float], end: dict[int, float]) -> float:
        return sum(cpu - start.get(pid, 0.0) for pid, cpu in end.items())


def batches(manifest: dict, bs: int, size: int, workers: int) -> Any:
    """The training loader of epoch 0 (one pass; the dataset is sized so that the runs fit inside it)."""
    from radimagenet.data.loader import make_loader

    return make_loader(manifest, "train", batch_size=bs, epoch=0, seed=0, train=True, num_workers=workers,
                       image_size=size, channels=3)


def loader_alone(manifest: dict, bs: int, size: int, workers: int, n: int) -> dict[str, float]:
    """The loader by itself for ``n`` batches after the first: images/s and CPU seconds per image
    (its worker processes and this process, which receives the batches)."""
    cpu = LoaderCpu()
    it = iter(batches(manifest, bs, size, workers))
    next(it)  # workers started, S3 streams open
    own0, kids0 = cpu.sample()
    t0, images = time.perf_counter(), 0
    for batch in itertools.islice(it, n):
        images += len(batch.labels)
    wall = time.perf_counter() - t0
    own1, kids1 = cpu.sample()
    workers_cpu = LoaderCpu.delta(kids0, kids1)
    del it
    return {"images": images, "img_s": images / wall, "workers_cpu_s": workers_cpu, "main_cpu_s": own1 - own0,
            "cpu_s_per_image": (workers_cpu + own1 - own0) / images}


def train_rates(manifest: dict, args: argparse.Namespace, device: Any, gpu: bool) -> dict[str, float]:
    """Synthetic and real-loader images/s of ResNet-50 on ``device``, and the loader's cores during the
    real run (its worker processes only: this process also runs the training step)."""
    import torch
    from train_step import make_step, sync

    from radimagenet.models.factory import create_model

    model = create_model(args.arch, len(manifest["classes"]), in_chans=3).to(device)
    if gpu:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    step = make_step(model, optimizer, torch.nn.CrossEntropyLoss(label_smoothing=0.1), device, gpu)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    labels = torch.randint(0, len(manifest["classes"]), (args.batch,), device=device)
    for _ in range(args.warmup):
        step(images, labels)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(images, labels)
    sync(device)
    synthetic = args.batch * args.steps / (time.perf_counter() - t0)

    cpu = LoaderCpu()
    it = iter(batches(manifest, args.batch, args.size, args.loader_workers))
    for batch in itertools.islice(it, args.warmup):
        step(batch.images, batch.labels)
    sync(device)
    _, kids0 = cpu.sample()
    t0, n = time.perf_counter(), 0
    for batch in itertools.islice(it, args.steps):
        step(batch.images, batch.labels)
        n += len(batch.labels)
    sync(device)
    wall = time.perf_counter() - t0
    _, kids1 = cpu.sample()
    del it
    real = n / wall
    return {"synthetic_img_s": synthetic, "real_img_s": real, "real_over_synthetic": real / synthetic,
            "real_images": n, "loader_cores_during_real": LoaderCpu.delta(kids0, kids1) / wall}


def summary(r: dict[str, Any]) -> str:
    """The human summary of a result."""
    lines = [f"device: {r['device']}; {r['mode']}; {r['arch']} batch {r['batch']} at {r['size']} px; "
             f"{r['loader_workers']} loader processes; {r['cpu_count']} CPUs; {r['s3']}"]
    if not r["gpu"]:
        lines.append("NO GPU FOUND (torch.cuda.is_available() is False): ran the CPU path (fp32); these figures "
                     "show that the benchmark runs and what the loader costs, not what a GPU does")
    lines += [
        f"synthetic tensors       {r['synthetic_img_s']:10,.1f} img/s",
        f"real loader (S3)        {r['real_img_s']:10,.1f} img/s = {r['real_over_synthetic']:.0%} of synthetic "
        f"(goal >= {GOAL_REAL_OVER_SYNTHETIC:.0%}: {'met' if r['goal_real_met'] else 'NOT met'})",
        f"loader alone            {r['loader_alone_img_s']:10,.1f} img/s with {r['loader_workers']} processes; "
        f"{r['loader_cpu_ms_per_image']:.3f} ms CPU per image",
        f"loader cores per GPU    {r['loader_cores_per_gpu']:10.2f} at the GPU's rate (synthetic) "
        f"(goal <= {GOAL_CORES_PER_GPU}: {'met' if r['goal_cores_met'] else 'NOT met'}); "
        f"{r['loader_cores_during_real']:.2f} used during the real run",
        f"dataset {r['dataset']} ({r['dataset_images']} images, {r['dataset_shards']} shards; written in "
        f"{r['write_s']:.1f} s, 0 = reused); whole run {r['total_s']:.0f} s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "gpu-results"),
                        help="folder for gpu.json and gpu.txt (default $OUT, else ./gpu-results)")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--loader-workers", type=int, default=None,
                        help="loader processes (default: GPU min(10, CPUs - 4), CPU 2)")
    parser.add_argument("--port-base", default="30100", help="ports of the S3 this starts (none in the env)")
    for key, help_ in zip(SIZE_KEYS, ("batch size", "image size (px)", "untimed steps", "timed steps",
                                      "loader-alone batches", "dataset images", "samples per shard"), strict=True):
        parser.add_argument(f"--{key}", type=int, help=f"{help_} (default GPU {SIZES['gpu'][SIZE_KEYS.index(key)]}, "
                                                       f"CPU {SIZES['cpu'][SIZE_KEYS.index(key)]})")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    import torch

    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    cpus = len(os.sched_getaffinity(0))
    for key, default in zip(SIZE_KEYS, SIZES["gpu" if gpu else "cpu"], strict=True):
        setattr(args, key, getattr(args, key) or default)
    args.loader_workers = args.loader_workers or (max(1, min(10, cpus - 4)) if gpu else 2)
    if gpu:
        torch.backends.cudnn.benchmark = True
        name, mode = torch.cuda.get_device_name(), "bf16 autocast + channels_last"
    else:
        name, mode = f"CPU only ({cpus} CPUs)", "fp32 (no GPU)"
        print("[gpu.py] no GPU found (torch.cuda.is_available() is False): running the CPU path (tiny unless "
              "sizes are given)", file=sys.stderr, flush=True)
    s3, home = start_s3(args.port_base)
    try:
        manifest, write_s = dataset(args.images, args.size, args.shard)
        next(iter(batches(manifest, args.batch, args.size, 0)))  # untimed: builds what the loader caches
        loader = loader_alone(manifest, args.batch, args.size, args.loader_workers, args.alone)
        rates = train_rates(manifest, args, device, gpu)
    finally:
        stop_s3(home)
    result: dict[str, Any] = {
        "device": name, "gpu": gpu, "mode": mode, "arch": args.arch, "batch": args.batch, "size": args.size,
        "warmup_steps": args.warmup, "timed_steps": args.steps, "loader_workers": args.loader_workers,
        "cpu_count": cpus, "torch": torch.__version__, "s3": s3, "dataset": manifest["uri"],
        "dataset_images": manifest["splits"]["train"]["samples"],
        "dataset_shards": len(manifest["splits"]["train"]["shards"]), "write_s": write_s, **rates,
        "loader_alone_img_s": loader["img_s"], "loader_cpu_ms_per_image": loader["cpu_s_per_image"] * 1e3,
        "loader_alone": loader, "loader_cores_per_gpu": loader["cpu_s_per_image"] * rates["synthetic_img_s"],
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    result["goal_real_met"] = result["real_over_synthetic"] >= GOAL_REAL_OVER_SYNTHETIC
    result["goal_cores_met"] = result["loader_cores_per_gpu"] <= GOAL_CORES_PER_GPU
    result["total_s"] = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    text = summary(result)
    (out / "gpu.txt").write_text(text + "\n")
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
