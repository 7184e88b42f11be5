"""Object operations against the real local S3 (SeaweedFS): deleting many objects in batches."""

from __future__ import annotations

import pytest

from radimagenet.io import storage

pytestmark = pytest.mark.integration


def test_delete_many_deletes_in_batches_of_a_thousand_and_leaves_the_rest(s3_prefix):
    doomed = [f"{s3_prefix}/doomed/{i:05d}" for i in range(1003)]  # two DeleteObjects requests
    kept = f"{s3_prefix}/kept/a"
    for uri in [*doomed, kept]:
        storage.write_bytes(uri, b"x")
    storage.delete_many([*doomed, f"{s3_prefix}/doomed/never-written"])  # one already gone: no error
    assert storage.list_keys(s3_prefix) == [kept]
    storage.delete_many([])


def test_delete_many_names_the_bucket_that_fails(stack_env):
    with pytest.raises(storage.StorageError, match="no-such-bucket-radimagenet"):
        storage.delete_many(["s3://no-such-bucket-radimagenet/a"])
