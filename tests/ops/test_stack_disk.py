"""A nearly full disk is named before SeaweedFS starts answering writes with a bare InternalError."""

from botocore.exceptions import ClientError

from radimagenet.io import storage
from radimagenet.ops import stack

GIB = 1024**3


def test_low_disk_is_warned_about(tmp_path):
    assert stack.disk_warning(tmp_path, usage=(100 * GIB, 50 * GIB, 50 * GIB)) is None
    nearly_full = stack.disk_warning(tmp_path, usage=(100 * GIB, 95 * GIB, 5 * GIB))  # 5% free
    assert nearly_full and str(tmp_path) in nearly_full and "5.0 GiB free of 100 GiB" in nearly_full
    assert "RADIMAGENET_HOME" in nearly_full
    small_disk = stack.disk_warning(tmp_path, usage=(10 * GIB, 8.5 * GIB, 1.5 * GIB))  # 15% but < 2 GiB
    assert small_disk and "1.5 GiB free" in small_disk
    # a home that does not exist yet (parents included) is judged by its nearest existing folder
    assert stack.disk_warning(tmp_path / "not" / "yet") == stack.disk_warning(tmp_path)


def test_an_s3_internal_error_points_at_the_disk():
    exc = ClientError({"Error": {"Code": "InternalError", "Message": "We encountered an internal error"}},
                      "PutObject")
    text = storage.describe_error(exc, "s3://radimagenet/datasets/x")
    assert "InternalError" in text and "full disk" in text and "s3://radimagenet/datasets/x" in text
