"""One module per CLI verb: ``add_arguments(parser)`` and ``run(args) -> int``.

Command modules only parse and call the library; they import heavy libraries inside ``run``. A verb's
module is imported only when that verb is used, so ``radimagenet --help`` does not pay for torch,
ray or mlflow.
"""

from __future__ import annotations

import argparse
import importlib

VERBS: dict[str, str] = {
    "stack": "start, stop and inspect the local stack (S3, MLflow, Ray head)",
    "synth": "write a synthetic DICOM corpus for tests and demos",
    "ingest": "decode, de-identify, split and shard key images into WebDataset tars on S3",
    "dataset": "inspect or verify an ingested dataset, or find what two datasets share",
    "pretrain": "pretrain a backbone with Ray Train",
    "registry": "list, show and promote registered models (backbones and fine-tuned models)",
    "finetune": "fine-tune a registered backbone downstream",
    "compare": "compare initialisations over several seeds",
    "sweep": "a grid of fine-tuning runs (inits, freeze, lr, seeds, label fractions) on Ray Tune",
    "predict": "run a registered model on local DICOM, PNG or JPEG files into a CSV",
    "export": "write a registered model as ONNX, TorchScript or a timm folder",
    "submit": "submit a command as a Ray job to a cluster",
    "jobs": "list, follow and stop Ray jobs",
}


def add_verb(parser: argparse.ArgumentParser, verb: str) -> None:
    """Fill ``parser`` with ``verb``'s arguments and its ``run`` (as ``_run``)."""
    module = importlib.import_module(f"radimagenet.commands.{verb}")
    module.add_arguments(parser)
    parser.set_defaults(_run=module.run)


def parse(verb: str, args: list[str]) -> argparse.Namespace:
    """``radimagenet VERB ARGS`` parsed by the verb's own parser (argparse errors exit)."""
    parser = argparse.ArgumentParser(prog=f"radimagenet {verb}", description=VERBS[verb])
    add_verb(parser, verb)
    return parser.parse_args(args)
