"""``radimagenet predict MODEL_URI INPUT... --out predictions.csv``: a registered model on local files."""

from __future__ import annotations

import argparse

MODEL_HELP = "models:/NAME@alias, NAME@alias, NAME/VERSION, NAME (latest) or a local model folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL_URI", help=MODEL_HELP)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="DICOM, PNG or JPEG files, or folders of them")
    parser.add_argument("--out", required=True, metavar="CSV",
                        help="one row per input: path, p_<class>..., predicted, error (segmentation: path, "
                             "lesion_fraction, mask, error)")
    parser.add_argument("--gradcam", default="", metavar="DIR", help="write a Grad-CAM overlay PNG per image here")
    parser.add_argument("--masks", default="", metavar="DIR",
                        help="segmentation models: where the mask PNGs go (default: next to --out, OUT-masks/)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="", help="cpu, cuda, cuda:1 ... (default: the GPU when there is one)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args: argparse.Namespace) -> int:
    from radimagenet.models.inference import load_predictor
    from radimagenet.models.predict import predict_files

    predictor = load_predictor(args.model, device=args.device)
    summary = predict_files(predictor, args.inputs, args.out, batch_size=args.batch_size,
                            gradcam_dir=args.gradcam, masks_dir=args.masks, progress=not args.no_progress)
    errors = ", ".join(f"{reason} {n}" for reason, n in sorted(summary.errors.items())) or "none"
    print(f"{summary.inputs} input(s): {summary.predicted} predicted, {sum(summary.errors.values())} unreadable "
          f"({errors}) -> {summary.out}" + (f"; images in {summary.images_dir}" if summary.images_dir else ""))
    return 0
