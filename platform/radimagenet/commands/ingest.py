"""``radimagenet ingest SOURCE [--labels CSV] --out s3://BUCKET/PREFIX [options]``."""

from __future__ import annotations

import argparse
import sys

EPILOG = (
    "Privacy: shared storage never names a source path. report.jsonl, the manifest and the resume journal "
    "name each input by a keyed pseudonym (src- + 16 hex digits of HMAC-SHA256 with the de-identification "
    "secret); the map back to paths is written only on this machine, mode 0600, to "
    "source-map/<16 hex digits of the --out URI>.jsonl beside the --secret-file, else in the folder of the "
    "default secret ($RADIMAGENET_HOME, else $XDG_CONFIG_HOME/radimagenet, else ~/.config/radimagenet), "
    "one {\"pseudonym\", \"path\", \"file\", \"kind\", \"dataset\"} line per input."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.add_argument("source", help="folder of key images (DICOM, PNG, JPEG)")
    p.add_argument("--labels", help="CSV with path,label[,patient_id][,split][,mask]; paths relative to SOURCE. "
                   "Without it, each file's folder (relative to SOURCE) is its label")
    p.add_argument("--multi-label", action="store_true",
                   help="each image may carry several labels: a --labels CSV cell lists them separated by '|' "
                   "(effusion|nodule); fine-tuning then trains a sigmoid head per label")
    p.add_argument("--unlabeled", action="store_true",
                   help="no labels: every image under SOURCE (at any depth) is read, folders give no class, and "
                   "a --labels CSV needs only a path column (its label column is ignored). The manifest says "
                   "unlabeled with no classes: a dataset for self-supervised pretraining, not for fine-tuning")
    p.add_argument("--out", required=True, help="s3://BUCKET/PREFIX for shards, report.jsonl and manifest.json")
    p.add_argument("--image-size", type=int, default=224, help="output size in pixels, whole image (default 224)")
    p.add_argument("--encoding", choices=["npy", "png"], default="npy",
                   help="lossless image encoding in the shards (default npy: fastest to read and write)")
    p.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test fractions by patient (default 0.8,0.1,0.1)")
    p.add_argument("--shard-size", default="256MB", help="target shard size (default 256MB)")
    p.add_argument("--workers", type=int, default=1, help="parallel Ray tasks; 1 runs in-process (default 1)")
    p.add_argument("--chunk-size", type=int, default=64, help="files per task (default 64; with --workers > 1 the least: "
                   "chunks grow up to 64 MiB of images while each worker still gets 4)")
    p.add_argument("--multiframe", choices=["middle", "first", "reject"], default="middle",
                   help="which frame of a multi-frame image becomes the key image (default middle)")
    p.add_argument("--window", action="append", default=[], metavar="MODALITY=CENTER,WIDTH",
                   help="default window for a modality when the file has none (default CT=40,400); repeatable")
    p.add_argument("--patient-from", choices=["auto", "column", "dicom", "file"], default="auto",
                   help="where the patient identity comes from (auto: the labels file's patient_id column, "
                   "then the DICOM PatientID; PNG/JPEG carry none, so without a patient_id column, --split-csv "
                   "or --split-unit image they stop the ingest before it writes anything). file: an alias "
                   "of --split-unit image")
    p.add_argument("--split-unit", choices=["patient", "image"], default="patient",
                   help="what the splits keep together (default patient). image: each file is its own unit, "
                   "so images of one patient can land in train and test; the manifest says split_unit image "
                   "and every run on the dataset carries a warning")
    p.add_argument("--split-csv", action="append", default=[], metavar="SPLIT=FILE",
                   help="take the splits as given by a file per split (train, val, test; repeatable), e.g. "
                   "RadImageNet's RadiologyAI_train.csv: a CSV with filename (or path) and label columns, paths "
                   "relative to SOURCE or to its parent folder. Its label column is not used (labels come from "
                   "--labels or the folders); a file listed in none is rejected not_in_split_files; a file "
                   "without a patient identity is then its own patient")
    p.add_argument("--max-megapixels", type=float, default=64.0,
                   help="largest decoded frame in megapixels, checked from the header before decoding; "
                   "larger files are rejected too_large (default 64)")
    p.add_argument("--allow-burned-in", action="store_true",
                   help="keep DICOMs whose BurnedInAnnotation is YES (text, possibly identifying, in the "
                   "pixels); rejected burned_in_annotation by default")
    p.add_argument("--text-check", choices=["off", "sc-us", "all"], default="off",
                   help="reject images with text in the pixels (burned_in_text), found by a CPU text detector "
                   "(needs the extra: pip install 'radimagenet[textcheck]'; ~0.2 s per image per core). "
                   "sc-us: DICOM secondary captures and ultrasound, and every PNG/JPEG input; all: every "
                   "image; off: none (default)")
    p.add_argument("--secret-file", help="file holding the de-identification secret (default: "
                   "$RADIMAGENET_DEID_SECRET, else deid-secret in $RADIMAGENET_HOME, else in "
                   "$XDG_CONFIG_HOME/radimagenet or ~/.config/radimagenet: created once, mode 0600, the same "
                   "whatever the current folder)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--take-over", action="store_true",
                   help="take the output prefix's lease from another ingest even if it still renews it "
                   "(only when you know that ingest is dead; a lease not renewed for 60 s, or held by a "
                   "process of this machine that is gone, is taken over without this flag)")


def _windows(items: list[str]) -> dict[str, tuple[float, float]]:
    from radimagenet.errors import ConfigError

    windows = {"CT": (40.0, 400.0)}
    for item in items:
        try:
            modality, values = item.split("=", 1)
            center, width = (float(v) for v in values.split(","))
        except ValueError:
            raise ConfigError(f"--window {item!r} is not MODALITY=CENTER,WIDTH (e.g. CT=-600,1500)") from None
        windows[modality.strip().upper()] = (center, width)
    return windows


def _split_csv(items: list[str]) -> dict[str, str]:
    from radimagenet.errors import ConfigError

    out: dict[str, str] = {}
    for item in items:
        split, sep, path = item.partition("=")
        if not sep or not path or split.strip() not in ("train", "val", "test"):
            raise ConfigError(f"--split-csv {item!r} is not SPLIT=FILE with SPLIT train, val or test")
        if split.strip() in out:
            raise ConfigError(f"--split-csv names the {split.strip()} split twice")
        out[split.strip()] = path
    return out


def run(args: argparse.Namespace) -> int:
    from radimagenet.dataset.inspect import class_warnings, split_unit_warnings, split_warnings
    from radimagenet.errors import ConfigError
    from radimagenet.ingest import IngestConfig, ingest
    from radimagenet.ingest.config import parse_size
    from radimagenet.ingest.deid import load_secret, source_map_path

    try:
        fractions = tuple(float(x) for x in args.split.split(","))
    except ValueError:
        raise ConfigError(f"--split {args.split!r} is not three numbers like 0.8,0.1,0.1") from None
    cfg = IngestConfig(
        source=args.source, out=args.out, labels=args.labels, image_size=args.image_size,
        encoding=args.encoding, split_fractions=fractions, shard_size=parse_size(args.shard_size),
        workers=args.workers, chunk_size=args.chunk_size, take_over=args.take_over, multiframe=args.multiframe,
        windows=_windows(args.window), patient_from=args.patient_from, split_unit=args.split_unit,
        split_csv=_split_csv(args.split_csv),
        max_megapixels=args.max_megapixels, allow_burned_in=args.allow_burned_in, text_check=args.text_check,
        multi_label=args.multi_label, unlabeled=args.unlabeled,
    )
    manifest = ingest(cfg, load_secret(args.secret_file), progress=False if args.no_progress else None,
                      source_map=source_map_path(args.out, args.secret_file))
    c = manifest["counts"]
    print(f"{manifest['uri']}: {c['inputs']} inputs, {c['written']} written, {c['rejected']} rejected, "
          f"{c['duplicates']} duplicates; " + ", ".join(
              f"{s} {v['samples']} in {len(v['shards'])} shard(s)" for s, v in manifest["splits"].items()))
    print(f"manifest: {manifest['uri']}/manifest.json  digest: {manifest['digest']}")
    for warning in split_unit_warnings(manifest) + split_warnings(manifest) + class_warnings(manifest):
        print(f"radimagenet ingest: warning: {warning}", file=sys.stderr)
    return 0
