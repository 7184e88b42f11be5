"""``radimagenet export MODEL_URI --format onnx|torchscript|timm --out DIR``: a model for other code."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from radimagenet.commands.predict import MODEL_HELP

    parser.add_argument("model", metavar="MODEL_URI", help=MODEL_HELP)
    parser.add_argument("--format", required=True, choices=("onnx", "torchscript", "timm"),
                        help="onnx: model.onnx (float32 NCHW input, dynamic batch); torchscript: model.pt "
                             "(torch.jit.trace); timm: config.json + model.safetensors for "
                             "timm.create_model('local-dir:DIR', pretrained=True)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the folder to write (with backbone.json, "
                                                                    "the preprocessing)")


def run(args: argparse.Namespace) -> int:
    from radimagenet.models.export import export_ref

    for path in export_ref(args.model, args.format, args.out):
        print(path)
    return 0
