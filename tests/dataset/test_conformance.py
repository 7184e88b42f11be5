"""Our shards are standard WebDataset: what ``radimagenet ingest`` writes, our reader, the ``webdataset``
library and ``ray.data.read_webdataset`` read back as the same samples, member for member, byte for byte."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from radimagenet.dataset import reader
from radimagenet.dataset.format import SPLITS, shard_name, split_shards
from radimagenet.dataset.verify import verify
from radimagenet.ingest import IngestConfig, ingest
from radimagenet.io import storage
from radimagenet.ops.synth import synthesize

pytestmark = pytest.mark.integration

SECRET = b"conformance-secret-0123456789abcdef"
Samples = dict[str, dict[str, dict[str, bytes]]]  # shard file name -> key -> ext -> bytes


@pytest.fixture(scope="module", params=["npy", "png"])
def shards(request, stack_env, tmp_path_factory) -> tuple[dict, list[Path]]:
    """A small downstream dataset (images and masks) in several shards, ingested the way users do,
    and local copies of its shards."""
    source = tmp_path_factory.mktemp("corpus")
    synthesize(source, images=36, seed=5, task="downstream")
    out = f"s3://radimagenet/tests/conformance-{request.param}-{os.urandom(4).hex()}"
    cfg = IngestConfig(source=str(source), labels=str(source / "labels.csv"), out=out, image_size=32,
                       encoding=request.param, shard_size=8 * 1024, split_fractions=(0.6, 0.2, 0.2))
    manifest = ingest(cfg, SECRET, progress=False)
    local = tmp_path_factory.mktemp(f"shards-{request.param}")
    paths = []
    for split in SPLITS:
        for ref in split_shards(manifest, split):
            path = local / ref.url.rsplit("/", 1)[1]
            path.write_bytes(storage.read_bytes(ref.url))
            paths.append(path)
    assert manifest["has_masks"] and sum(1 for p in paths if p.name.startswith("train-")) >= 3, paths
    return manifest, paths


def _members(sample: dict) -> dict[str, bytes]:
    return {ext: bytes(data) for ext, data in sample.items() if not ext.startswith("__") and data is not None}


def _ours(manifest: dict) -> tuple[Samples, list[str]]:
    out: Samples = {}
    order = []
    for split in SPLITS:
        for ref in split_shards(manifest, split):
            samples = out.setdefault(ref.url.rsplit("/", 1)[1], {})
            for sample in reader.read_shard(ref.url):
                samples[sample["__key__"]] = _members(sample)
                order.append(sample["__key__"])
    return out, order


def _webdataset(paths: list[Path]) -> tuple[Samples, list[str]]:
    import webdataset

    out: Samples = {}
    order = []
    for sample in webdataset.WebDataset([str(p) for p in paths], shardshuffle=False, empty_check=False):
        out.setdefault(Path(sample["__url__"]).name, {})[sample["__key__"]] = _members(sample)
        order.append(sample["__key__"])
    return out, order


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """An in-process Ray (not the stack's cluster: RAY_ADDRESS names its dashboard), shut down after."""
    from radimagenet.io import cluster

    with cluster.connect(num_cpus=1, log_to_driver=False, include_dashboard=False, stack_head=False):
        yield


def _ray(paths: list[Path]) -> Samples:
    import ray

    out: Samples = {}
    rows = ray.data.read_webdataset([str(p) for p in paths], decoder=None, include_paths=True).take_all()
    for row in rows:
        members = _members({k: v for k, v in row.items() if k != "path"})
        out.setdefault(Path(row["path"]).name, {})[row["__key__"]] = members
    return out


def test_ours_webdataset_and_ray_read_the_same_samples(shards, local_ray):
    manifest, paths = shards
    ours, our_order = _ours(manifest)
    wds, wds_order = _webdataset(paths)
    ray_samples = _ray(paths)

    expected_exts = {manifest["encoding"], "cls", "json", "mask.png"}
    assert sum(len(s) for s in ours.values()) == manifest["counts"]["written"] > 20
    for split in SPLITS:
        for n, ref in enumerate(split_shards(manifest, split)):
            name = shard_name(split, n)
            assert ref.url.endswith("/" + name) and len(ours[name]) == ref.samples
            assert all(set(members) == expected_exts for members in ours[name].values())
    assert wds_order == our_order  # the same samples in the same order
    assert wds == ours  # the same keys, the same members, the same bytes
    assert ray_samples == ours
    for members in ours.values():  # and they decode as our loader decodes them
        for key, sample in members.items():
            image = reader.decode_image({"__key__": key, **sample}, manifest["encoding"])
            mask = reader.decode_mask(sample)
            assert image.shape == mask.shape == (32, 32)
    assert verify(manifest) == []
