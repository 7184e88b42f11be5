"""The stack's secrets: generated once, private, and completed when an older stack lacks some."""

from __future__ import annotations

import json

from radimagenet.ops.stack import state


def test_credentials_are_generated_private_and_kept(tmp_path):
    first = state._credentials(tmp_path)
    assert {"s3_access_key", "s3_secret_key", "ray_token", "mlflow_username", "mlflow_password"} <= set(first)
    assert (tmp_path / "credentials.json").stat().st_mode & 0o077 == 0
    assert state._credentials(tmp_path) == first


def test_an_older_stack_gets_the_mlflow_secrets_it_lacks(tmp_path):
    old = {"s3_access_key": "RINOLD", "s3_secret_key": "old-secret", "ray_token": "old-token"}
    (tmp_path / "credentials.json").write_text(json.dumps(old))
    creds = state._credentials(tmp_path)
    assert {k: creds[k] for k in old} == old and len(creds["mlflow_password"]) >= 24
    assert json.loads((tmp_path / "credentials.json").read_text()) == creds
    assert (tmp_path / "credentials.json").stat().st_mode & 0o077 == 0
