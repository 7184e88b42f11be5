"""The record that travels with every model, and the preprocessing it drives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radimagenet import models
from radimagenet.data.transforms import preprocess
from radimagenet.errors import ConfigError
from radimagenet.models.record import BackboneRecord, make_record

MANIFEST = {"classes": ["CT/lung/nodule", "CT/lung/normal", "MR/knee/acl", "US/thyroid"],
            "image_size": 64, "digest": "sha256:abc"}


def test_record_round_trip_and_preprocess():
    record = make_record("resnet18", MANIFEST, in_chans=3, image_size=32, mean=(0.5,), std=(0.25,))
    assert record.input_size == (3, 32, 32) and record.mean == (0.5,) * 3 and record.num_classes == 4
    assert record.dataset_digest == "sha256:abc" and record.classes == MANIFEST["classes"]
    again = BackboneRecord.from_dict(record.to_dict())
    assert again == record
    with pytest.raises(ConfigError):
        BackboneRecord.from_dict({"format": "something-else"})

    grey = np.full((2, 64, 64), 255, np.uint8)
    x = preprocess(grey, record)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(x, torch.full_like(x, (1.0 - 0.5) / 0.25), atol=1e-5)
    assert preprocess(np.zeros((32, 32), np.uint8), record).shape == (1, 3, 32, 32)
    with pytest.raises(ConfigError, match="mean"):
        make_record("resnet18", MANIFEST, in_chans=3, mean=(0.1, 0.2))
    assert torch.equal(models.preprocess(grey, record), x)  # the notebook name is the same function


def test_record_keeps_task_and_decode_settings_and_reads_old_records():
    manifest = {**MANIFEST, "ingest": {"image_size": 64, "multiframe": "first", "windows": {"CT": [50, 350]},
                                       "encoding": "npy", "split_fractions": [0.8, 0.1, 0.1]}}
    record = make_record("resnet18", manifest, image_size=32)
    assert record.task == "classification"
    assert record.ingest == {"image_size": 64, "multiframe": "first", "windows": {"CT": [50, 350]}}
    old = {k: v for k, v in record.to_dict().items() if k not in ("task", "ingest")}  # a version from before
    again = BackboneRecord.from_dict(old)
    assert again.task == "classification" and again.ingest == {}
    with pytest.raises(ConfigError, match="task"):
        BackboneRecord.from_dict({**record.to_dict(), "task": "detection"})
