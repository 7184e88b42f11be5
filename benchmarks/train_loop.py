"""The library's training loop against a bare training step, on the same device and model.

    python benchmarks/train_loop.py                       # resnet50, GPU if there is one
    python benchmarks/train_loop.py --arch densenet121 --batch-size 128 --steps 40

Runs ``radimagenet.train.engine.train_one_epoch`` (the code every pretraining and fine-tuning run uses:
bf16 autocast + channels_last on a GPU, optimizer, LR schedule, metric logging) over batches held in
pinned host memory, so each step also copies its batch to the device as with the real loader, and
compares it with ``benchmarks/train_step.py``'s bare step on a device-resident batch (the ceiling).
Then Grad-CAM (``radimagenet.eval.explain.gradcam``) on the trained model: maps/s. Needs no S3, Ray or
MLflow, so it runs on any machine with torch and timm.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--batch-size", type=int, default=None, help="default 256 on GPU, 8 on CPU")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 60 GPU, 3 CPU)")
    ap.add_argument("--num-classes", type=int, default=165)
    args = ap.parse_args(argv)

    import torch
    import torch.nn as nn
    from train_step import make_step, timed

    from radimagenet.config import load_config
    from radimagenet.data.loader import Batch
    from radimagenet.eval.explain import gradcam
    from radimagenet.models.factory import create_model
    from radimagenet.tasks.pretrain import PretrainConfig, PretrainTask
    from radimagenet.train.context import Context
    from radimagenet.train.engine import train_one_epoch
    from radimagenet.train.optim import build_optimizer, build_scheduler

    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    if gpu:
        torch.backends.cudnn.benchmark = True
    bs, size = args.batch_size or (256 if gpu else 8), args.image_size
    steps = args.steps or (60 if gpu else 3)
    warmup = 15 if gpu else 1
    cfg = load_config(PretrainConfig, None, [f"model.arch={args.arch}", f"train.batch_size={bs}",
                                             "train.log_every=20", "train.epochs=1"])
    name = torch.cuda.get_device_name() if gpu else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {name}; {args.arch}; batch {bs}; {size} px; {steps} timed steps")

    def fresh():
        torch.manual_seed(0)
        model = create_model(args.arch, args.num_classes, 3).to(device)
        return model.to(memory_format=torch.channels_last) if gpu else model

    # the ceiling: train_step.py's bare step on one device-resident batch
    model = fresh()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    step = make_step(model, opt, nn.CrossEntropyLoss(label_smoothing=0.1), device, gpu)
    images = torch.randn(bs, 3, size, size, device=device)
    labels = torch.randint(0, args.num_classes, (bs,), device=device)
    bare = timed(step, itertools.repeat((images, labels)), warmup, steps, device)
    del model, opt, step

    # the library's loop over pinned host batches (the copy to the device is inside the loop)
    model = fresh()
    opt = build_optimizer(model, cfg.train)
    sched = build_scheduler(opt, cfg.train, warmup + steps)
    keys = [str(i) for i in range(bs)]
    host = [Batch(images.cpu().pin_memory() if gpu else images.cpu(), labels.cpu(), keys) for _ in range(2)]
    ctx = Context(device=device)
    logged: list[dict] = []
    task = PretrainTask(cfg, {"classes": [str(c) for c in range(args.num_classes)], "image_size": size})
    train_one_epoch(model, task, host * (warmup // 2 + 1), opt, sched, ctx, cfg.train, 0, 0, lambda m, s: None)
    if gpu:
        torch.cuda.synchronize()
    t = time.perf_counter()
    _, epoch, _ = train_one_epoch(model, task, host * (steps // 2), opt, sched, ctx, cfg.train, 0, 0,
                               lambda m, s: logged.append(m))
    if gpu:
        torch.cuda.synchronize()
    loop = bs * 2 * (steps // 2) / (time.perf_counter() - t)
    if not all(torch.isfinite(torch.tensor(m["train/loss"])) for m in logged):
        raise SystemExit(f"non-finite loss in the loop: {logged}")

    # Grad-CAM on the trained model, a batch at a time
    cam_batch = min(bs, 64)
    x = images[:cam_batch]
    gradcam(model, x)
    if gpu:
        torch.cuda.synchronize()
    t, reps = time.perf_counter(), (5 if gpu else 1)
    for _ in range(reps):
        maps = gradcam(model, x)
    if gpu:
        torch.cuda.synchronize()
    cam_rate = cam_batch * reps / (time.perf_counter() - t)
    if maps.shape != (cam_batch, size, size) or not bool(((maps >= 0) & (maps <= 1)).all()):
        raise SystemExit(f"Grad-CAM maps out of range or of shape {tuple(maps.shape)}")

    print(f"bare step (device-resident batch)  {bare:9.1f} img/s")
    print(f"library loop (host batches)        {loop:9.1f} img/s   {loop / bare:.0%} of the bare step")
    print(f"  epoch loss {epoch['train/epoch_loss']:.3f}; {len(logged)} log points, all finite")
    print(f"Grad-CAM                           {cam_rate:9.1f} maps/s (batch {cam_batch}, {size} px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
