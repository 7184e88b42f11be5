"""``radimagenet ingest --unlabeled``: an archive without labels becomes a dataset that is still de-identified,
deduplicated and split by patient, whose manifest says it has no classes and whose samples have no ``.cls``
member; the loader gives them the label -1. Sources first (no server), then the CLI on the stack."""

from __future__ import annotations

import dataclasses
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest

from radimagenet.dataset.format import UNLABELED
from radimagenet.errors import ConfigError
from radimagenet.ingest import IngestConfig, ingest
from radimagenet.ingest.sources import class_list, read_inputs

SECRET = b"test-secret-unlabeled-0123456789"


def _png(path: Path, seed: int) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 48), dtype=np.uint8)).save(path)
    return path


# --- sources (no server) ---------------------------------------------------------------------------


def test_a_flat_folder_is_read_without_labels(tmp_path):
    for i in range(3):
        _png(tmp_path / f"{i}.png", i)
    labelled = read_inputs(str(tmp_path), None)  # the folder layout: a file directly in SOURCE has no label
    assert {r.problem[0] for r in labelled} == {"missing_label"}
    rows = read_inputs(str(tmp_path), None, unlabeled=True)
    assert [(r.source, r.label, r.problem) for r in rows] == [(f"{i}.png", "", None) for i in range(3)]
    assert all(Path(r.path).is_file() for r in rows) and class_list(rows) == []


def test_nested_folders_give_no_class_and_links_out_stay_unread(tmp_path):
    src, outside = tmp_path / "src", tmp_path / "outside"
    for rel in ("top.png", "CT/lung/nodule/a.png", "x/y/z/w/deep.png", "US/b.png"):
        _png(src / rel, len(rel))
    _png(outside / "PHI^Doe.png", 9)
    (src / "CT/out.png").symlink_to(outside / "PHI^Doe.png")
    rows = read_inputs(str(src), None, unlabeled=True)
    by_source = {r.source: r for r in rows}
    assert sorted(by_source) == ["CT/lung/nodule/a.png", "CT/out.png", "US/b.png", "top.png", "x/y/z/w/deep.png"]
    assert all(r.label == "" for r in rows)
    assert by_source["CT/out.png"].problem[0] == "outside_source" and by_source["CT/out.png"].path == ""
    assert [r.problem for s, r in sorted(by_source.items()) if s != "CT/out.png"] == [None] * 4
    assert class_list(rows) == []


def test_a_labels_csv_label_column_is_ignored_said_once(tmp_path, capsys):
    for name in ("a.png", "b.png", "c.png"):
        _png(tmp_path / "img" / name, ord(name[0]))
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label,patient_id,split\nimg/a.png,CT/x,P1,train\nimg/b.png,,P2,\nimg/c.png,US\ty,P2,\n")
    rows = read_inputs(str(tmp_path), str(labels), unlabeled=True)
    assert [(r.label, r.patient_id, r.split, r.problem) for r in rows] == [
        ("", "P1", "train", None), ("", "P2", None, None), ("", "P2", None, None)]  # no missing or bad label
    err = capsys.readouterr().err
    assert err.count("the label column of") == 1 and "is ignored" in err
    bare = tmp_path / "paths.csv"  # only a path column: enough without labels, not with them
    bare.write_text("path,patient_id\nimg/a.png,P1\n")
    assert [(r.label, r.problem) for r in read_inputs(str(tmp_path), str(bare), unlabeled=True)] == [("", None)]
    assert "ignored" not in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"missing column\(s\) \['label'\]"):
        read_inputs(str(tmp_path), str(bare))


def test_unlabeled_and_multi_label_exclude_each_other(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\na.png,x|y\n")
    with pytest.raises(ConfigError, match="--unlabeled and --multi-label exclude each other"):
        read_inputs(str(tmp_path), str(labels), multi_label=True, unlabeled=True)
    with pytest.raises(ConfigError, match="--unlabeled and --multi-label exclude each other"):
        IngestConfig(source=str(tmp_path), out="s3://b/p", unlabeled=True, multi_label=True)


def test_the_journal_config_names_unlabeled_only_when_on():
    assert "unlabeled" not in IngestConfig(source="s", out="s3://b/p").fingerprint_fields()  # older journals match
    assert IngestConfig(source="s", out="s3://b/p", unlabeled=True).fingerprint_fields()["unlabeled"] is True


def test_a_processed_sample_carries_no_label(tmp_path):
    import json

    from radimagenet.ingest import decode
    from radimagenet.ingest.process import Context, process_row
    from radimagenet.ingest.sources import InputRow

    path = _png(tmp_path / "a.png", 1)
    ctx = Context(class_ids={}, decode_cfg=decode.DecodeConfig(), image_size=32, encoding="npy", secret=SECRET,
                  fractions=(0.8, 0.1, 0.1), patient_from="file", unlabeled=True)
    sample = process_row(InputRow(index=0, source="a.png", path=str(path), label=""), ctx)
    assert sample.label_id == UNLABELED and sample.label_ids == ()
    meta = json.loads(sample.meta)
    assert not {"label", "label_id", "label_ids"} & set(meta) and meta["split"] == sample.split


# --- the CLI on the stack --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, dict]:
    """A synthetic archive without labels.csv, its DICOMs (patients in PatientID) at several depths."""
    from radimagenet.ops.synth import synthesize

    root = tmp_path_factory.mktemp("unlabeled")
    info = synthesize(root / "corpus", images=30, seed=12, unlabeled=True)  # a seed that fills every split
    assert not (root / "corpus" / "labels.csv").exists()
    src = root / "corpus" / "images"
    for i, sub in ((0, "a"), (1, "a/b/c"), (2, "a/b/c"), (10, "z")):  # the rest stay directly in SOURCE
        (src / sub).mkdir(parents=True, exist_ok=True)
        shutil.move(src / f"{i:05d}.dcm", src / sub / f"{i:05d}.dcm")
    (root / "secret").write_bytes(SECRET)
    return src, info


def _prefix(name: str) -> str:
    return f"s3://radimagenet/tests/unlabeled-{name}-{uuid.uuid4().hex[:8]}"


def _config(src: Path, out: str, **kw) -> IngestConfig:
    return IngestConfig(source=str(src), out=out, unlabeled=True, image_size=32, split_fractions=(0.6, 0.2, 0.2),
                        shard_size=8 * 1024, **kw)


@pytest.fixture(scope="module")
def ingested(stack_env, archive) -> tuple[str, dict]:
    from radimagenet.cli import main
    from radimagenet.dataset.format import load_manifest

    src, _ = archive
    out = _prefix("cli")
    rc = main(["ingest", str(src), "--unlabeled", "--out", out, "--image-size", "32", "--split", "0.6,0.2,0.2",
               "--shard-size", "8KB", "--secret-file", str(src.parents[1] / "secret"), "--no-progress"])
    assert rc == 0
    return out, load_manifest(out)


@pytest.mark.integration
def test_the_manifest_says_unlabeled_and_every_input_is_accounted_for(ingested, archive):
    from radimagenet.dataset.inspect import load_report

    out, m = ingested
    _, info = archive
    assert m["unlabeled"] is True and m["classes"] == [] and m["multi_label"] is False
    assert all(s["classes"] == {} for s in m["splits"].values())
    c = m["counts"]
    assert c["inputs"] == 30 and c["written"] + c["rejected"] + c["duplicates"] == 30
    assert c["duplicates"] == len(info["planted"]["duplicates"]) == 2  # exact copies under other patients
    assert c["rejected"] == 2 and "blank" in c["rejected_by_reason"] and c["classes_without_images"] == []
    assert m["split_unit"] == "patient"  # PatientID from the DICOMs, as for a labelled ingest
    assert all(m["splits"][s]["samples"] > 0 and m["splits"][s]["patients"] > 0 for s in ("train", "val", "test"))
    report = load_report(out)
    dups = [line for line in report if line["status"] == "duplicate"]
    assert len(dups) == 2 and all(line["duplicate_of"].startswith("src-") for line in dups)


@pytest.mark.integration
def test_samples_have_no_label_and_patients_stay_in_one_split(ingested, archive):
    from radimagenet.dataset.reader import iterate_samples, read_shard
    from radimagenet.dataset.verify import verify

    _, m = ingested
    _, info = archive
    assert verify(m) == []
    split_of: dict[str, set[str]] = {}
    for split in ("train", "val", "test"):
        for shard in m["splits"][split]["shards"]:
            for raw in read_shard(shard["url"]):
                assert sorted(k for k in raw if k != "__key__") == ["json", "npy"]
        for s in iterate_samples(m, split):
            assert s["label_id"] == UNLABELED and s["label_ids"] == ()
            assert not {"label", "label_id"} & set(s["meta"])
            split_of.setdefault(s["meta"]["patient"], set()).add(split)
    assert all(len(splits) == 1 for splits in split_of.values()) and len(split_of) > 3
    assert sum(len(s["shards"]) for s in m["splits"].values()) > 3  # several shards: the plan ran as usual
    assert not any(phi in repr(m) for phi in info["phi"])


@pytest.mark.integration
def test_inspect_verify_and_overlap_work_without_labels(ingested, capsys):
    from radimagenet.cli import main
    from radimagenet.dataset.overlap import overlap

    out, m = ingested
    assert main(["dataset", "inspect", out]) == 0
    text = capsys.readouterr().out
    assert "unlabeled dataset" in text and m["digest"] in text
    assert main(["dataset", "verify", out]) == 0
    assert capsys.readouterr().out.startswith("OK:")
    report = overlap(m, m, cache=False)
    assert report["images_exact"] == m["counts"]["written"]


@pytest.mark.integration
def test_the_loader_yields_label_minus_one(ingested):
    import torch

    from radimagenet.data.loader import make_loader

    _, m = ingested
    for train, split in ((True, "train"), (False, "val")):
        loader = make_loader(m, split, batch_size=4, train=train, num_workers=0, drop_last=False)
        labels = torch.cat([batch.labels for batch in loader])
        assert labels.dtype == torch.int64 and len(labels) == m["splits"][split]["samples"] > 0
        assert labels.eq(UNLABELED).all()


@pytest.mark.integration
def test_two_workers_and_a_resumed_ingest_give_the_same_digest(stack_env, ingested, archive, tmp_path,
                                                               monkeypatch):
    from helpers_assets import crash_ingest_at_chunk
    from radimagenet.io import storage

    _, m = ingested
    src, _ = archive
    shas = lambda man: [sh["sha256"] for s in man["splits"].values() for sh in s["shards"]]  # noqa: E731
    parallel = ingest(_config(src, _prefix("workers"), workers=2, chunk_size=4), SECRET, progress=False,
                      source_map=tmp_path / "map-workers.jsonl")
    assert parallel["digest"] == m["digest"] and shas(parallel) == shas(m)

    out = _prefix("resume")
    crash_ingest_at_chunk(monkeypatch, 5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ingest(_config(src, out, chunk_size=4), SECRET, progress=False, source_map=tmp_path / "map.jsonl")
    assert [u for u in storage.list_keys(out + "/_journal") if not u.endswith("config.json")]
    monkeypatch.undo()
    labelled = dataclasses.replace(_config(src, out, chunk_size=4), unlabeled=False)
    with pytest.raises(ConfigError, match="different settings .*unlabeled"):
        ingest(labelled, SECRET, progress=False, source_map=tmp_path / "map.jsonl")
    resumed = ingest(_config(src, out, chunk_size=4), SECRET, progress=False, source_map=tmp_path / "map.jsonl")
    assert resumed["digest"] == m["digest"] and resumed["counts"] == m["counts"]

