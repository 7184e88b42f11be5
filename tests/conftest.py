"""Shared fixtures: ``stack_env`` starts one local stack (S3, MLflow, Ray head) for the whole session.

The stack runs in a temporary home with ports from ``RADIMAGENET_TEST_PORT_BASE`` (default 24000,
the stack uses base..base+17), so several test sessions on one machine can coexist when each picks
its own base. Its client variables (AWS_*, MLFLOW_*, RAY_*) are put into ``os.environ`` for the
session, so boto3, mlflow and Ray clients in tests find it without arguments.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator

import pytest


def _refresh_ray_auth() -> None:
    """Ray reads RAY_AUTH_MODE / RAY_AUTH_TOKEN once per process and caches them; when a test module
    imported ray before the stack's variables were set (or after they are restored), re-read them."""
    if "ray" not in sys.modules:
        return
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@pytest.fixture(scope="session")
def stack_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Start a stack for the session; yield its env (also put into ``os.environ``); stop it at the end."""
    from radimagenet.ops import stack

    home = tmp_path_factory.mktemp("stack")
    saved = dict(os.environ)
    for name in stack.PORTS:
        os.environ.pop(f"RADIMAGENET_{name.upper()}_PORT", None)
    os.environ["RADIMAGENET_PORT_BASE"] = os.environ.get("RADIMAGENET_TEST_PORT_BASE", "24000")
    try:
        env = stack.up(home)
        os.environ.update(env)
        _refresh_ray_auth()
        yield env
    finally:
        try:
            if "ray" in sys.modules and sys.modules["ray"].is_initialized():
                sys.modules["ray"].shutdown()  # a driver whose cluster dies takes the process with it
            stack.down(home)
        finally:
            os.environ.clear()
            os.environ.update(saved)
            _refresh_ray_auth()


@pytest.fixture
def s3_prefix(stack_env: dict[str, str]) -> str:
    """A fresh ``s3://radimagenet/tests/<random>`` prefix on the session stack."""
    return f"s3://radimagenet/tests/{uuid.uuid4().hex[:12]}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that starts or uses the stack must say so (``integration`` or ``e2e``), so that
    ``make test-fast`` (``-m "not integration and not e2e"``) never starts a server."""
    unmarked = [item.nodeid for item in items
                if "stack_env" in getattr(item, "fixturenames", ())
                and not (item.get_closest_marker("integration") or item.get_closest_marker("e2e"))]
    if unmarked:
        raise pytest.UsageError(f"tests use the stack without the integration marker: {unmarked}")
