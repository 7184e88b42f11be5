"""Training-step throughput (images/s) per architecture, synthetic tensors and optionally the real loader.

    python benchmarks/train_step.py                                  # all four RadImageNet archs
    python benchmarks/train_step.py --arch resnet50 --batch-size 256 --steps 50
    python benchmarks/train_step.py --arch resnet50 --manifest s3://radimagenet/datasets/X/manifest.json
    python benchmarks/train_step.py --arch resnet50 --objective dino --objective mae   # SSL vs supervised

On a GPU each step is bf16 autocast + channels_last + SGD (the pretraining loop's settings); on CPU
fp32 with a small batch. Synthetic: one batch reused (the model's ceiling). Real loader: batches
streamed from S3 through ``radimagenet.data.loader.make_loader`` and copied to the device in the timed loop;
the ratio real/synthetic says how much the input pipeline costs (goal on an H100: ResNet-50 >= 3,500
img/s synthetic, real loader >= 90% of that). ``--objective dino|mae``: also the self-supervised step of
the same architecture on the same synthetic batch (``radimagenet.models.ssl`` with its default settings:
DINO's 2 global + 6 local crops, 4096 prototypes, the EMA update; masked-image modelling at ratio 0.6),
in images/s and as a ratio to the supervised step measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

ARCHS = ("resnet50", "densenet121", "inception_v3", "inception_resnet_v2")
GOAL_RESNET50_H100 = 3500.0


def make_step(model, optimizer, loss_fn, device, gpu: bool):
    import torch

    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if gpu else contextlib.nullcontext
    fmt = torch.channels_last if gpu else torch.contiguous_format

    def step(images, labels):
        images = images.to(device, non_blocking=True, memory_format=fmt)
        labels = labels.to(device, non_blocking=True)
        with autocast():
            loss = loss_fn(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step, batches, warmup: int, steps: int, device) -> float:
    """images/s over ``steps`` steps after ``warmup`` steps; ``batches`` yields (images, labels)."""
    it = iter(batches)
    for _ in range(warmup):
        step(*next(it))
    sync(device)
    t0, n = time.perf_counter(), 0
    for _ in range(steps):
        images, labels = next(it)
        step(images, labels)
        n += len(labels)
    sync(device)
    return n / (time.perf_counter() - t0)


def bench_arch(arch: str, args, device, gpu: bool, manifest=None) -> dict:
    import itertools

    import torch

    from radimagenet.models.factory import create_model

    num_classes = len(manifest["classes"]) if manifest else args.num_classes
    model = create_model(arch, num_classes, in_chans=3).to(device)
    if gpu:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    if args.compile:
        model = torch.compile(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    step = make_step(model, optimizer, torch.nn.CrossEntropyLoss(label_smoothing=0.1), device, gpu)
    size, bs = args.image_size, args.batch_size
    images = torch.randn(bs, 3, size, size, device=device)
    labels = torch.randint(0, num_classes, (bs,), device=device)
    out = {"arch": arch, "batch_size": bs, "image_size": size,
           "synthetic": timed(step, itertools.repeat((images, labels)), args.warmup, args.steps, device)}
    if manifest is not None:
        from radimagenet.data import loader as data

        def real():
            for epoch in itertools.count():
                for batch in data.make_loader(manifest, "train", batch_size=bs, epoch=epoch,
                                              num_workers=args.loader_workers, image_size=size, channels=3):
                    yield batch.images, batch.labels

        out["real_loader"] = timed(step, real(), args.warmup, args.steps, device)
        out["real_over_synthetic"] = out["real_loader"] / out["synthetic"]
    del model, optimizer
    if gpu:
        torch.cuda.empty_cache()
    return out


def bench_ssl(arch: str, objective: str, args, device, gpu: bool) -> float:
    """Synthetic images/s of one self-supervised step (loss, backward, optimizer, teacher EMA)."""
    import itertools

    import torch

    from radimagenet.models.ssl import build_ssl
    from radimagenet.models.ssl_config import SSLSection

    net = build_ssl(objective, arch, in_chans=3, image_size=args.image_size, settings=SSLSection()).to(device)
    if gpu:
        net = net.to(memory_format=torch.channels_last)
    net.train()
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if gpu else contextlib.nullcontext
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)

    def step(x, _labels):
        with autocast():
            loss = net(x).float().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if hasattr(net, "after_step"):
            net.after_step()

    return timed(step, itertools.repeat((images, images[:, 0, 0, 0])), args.warmup, args.steps, device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", help=f"architecture (repeatable; default {', '.join(ARCHS)})")
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 on GPU, 8 on CPU")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 50 GPU, 3 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 15 GPU, 1 CPU)")
    parser.add_argument("--num-classes", type=int, default=165, help="synthetic head size (no manifest)")
    parser.add_argument("--manifest", help="s3://.../manifest.json: also time the real loader")
    parser.add_argument("--loader-workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--objective", action="append", choices=("dino", "mae"), default=[],
                        help="also time this self-supervised objective's step (repeatable)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    import torch

    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    if gpu:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    args.batch_size = args.batch_size or (256 if gpu else 8)
    args.steps = args.steps or (50 if gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else (15 if gpu else 1)
    manifest = None
    if args.manifest:
        from radimagenet.dataset.format import load_manifest

        manifest = load_manifest(args.manifest)
    name = torch.cuda.get_device_name() if gpu else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    mode = "bf16 autocast + channels_last" if gpu else "fp32"
    print(f"device: {name}; {mode}; batch {args.batch_size}; {args.image_size} px; {args.steps} timed steps")
    results = []
    for arch in args.arch or ARCHS:
        r = bench_arch(arch, args, device, gpu, manifest)
        results.append(r)
        line = f"{arch:22s} synthetic {r['synthetic']:9.1f} img/s"
        if "real_loader" in r:
            line += f"   real loader {r['real_loader']:9.1f} img/s ({r['real_over_synthetic']:.0%} of synthetic)"
        for objective in args.objective:
            r[objective] = bench_ssl(arch, objective, args, device, gpu)
            line += f"   {objective} {r[objective]:9.1f} img/s ({r[objective] / r['synthetic']:.2f}x supervised)"
        print(line, flush=True)
    base = next((r for r in results if r["arch"] == "resnet50"), None)
    if base:
        print("ratios to resnet50 (synthetic):  " + "  ".join(
            f"{r['arch']} {r['synthetic'] / base['synthetic']:.2f}x" for r in results))
        if gpu:
            print(f"resnet50 vs goal {GOAL_RESNET50_H100:.0f} img/s per H100: {base['synthetic'] / GOAL_RESNET50_H100:.0%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "mode": mode, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
